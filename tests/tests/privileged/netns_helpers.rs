//! The namespace helpers themselves: the other privileged tests rely on their clean-up.

use multihome_tests::netns::{require_root, veth, Netns};

#[test]
fn namespaces_are_isolated_connected_and_removed() {
    require_root();
    let a = Netns::new("a").unwrap();
    let b = Netns::new("b").unwrap();
    veth(&a, "left", &b, "right").unwrap();
    a.run(&["ip", "addr", "add", "192.168.0.2/24", "dev", "left"])
        .unwrap();
    b.run(&["ip", "addr", "add", "192.168.0.1/24", "dev", "right"])
        .unwrap();
    a.run(&["ping", "-c1", "-W2", "192.168.0.1"]).unwrap();
    assert!(a.ifindex("left").unwrap() > 1);
    assert!(!b.has_link("left"), "the veth end stays in its namespace");
    let in_a = a.enter(|| std::fs::read_to_string("/proc/thread-self/net/dev").unwrap());
    assert!(
        in_a.contains("left:"),
        "enter() runs in the namespace: {in_a}"
    );
    let mut sleeper = a.spawn(&["sleep", "600"]).unwrap();
    assert!(sleeper.running());
    let (path, name) = (a.path(), a.name().to_owned());
    drop(a);
    assert!(!path.exists(), "{name} removed");
    assert!(
        !sleeper.running(),
        "processes inside are killed with the namespace"
    );
}
