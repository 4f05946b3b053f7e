//! The service's configured uplinks, for commands run from an operator's shell: `status` and
//! `check` use $MULTIHOME_UPLINKS, else the `MULTIHOME_UPLINKS=` line of the unit's
//! EnvironmentFile (/etc/default/multihome, or the file $MULTIHOME_DEFAULTS names). Without it,
//! `status` could only list uplinks multihome still owns objects for, and an uplink whose
//! device vanished (its objects removed with it) would go unreported.

use std::fs;

pub(crate) const DEFAULT_FILE: &str = "/etc/default/multihome";

/// The uplink list from the environment or the EnvironmentFile, if either has one.
pub(crate) fn uplink_list() -> Option<String> {
    if let Ok(list) = std::env::var("MULTIHOME_UPLINKS") {
        return Some(list);
    }
    let path = std::env::var("MULTIHOME_DEFAULTS").unwrap_or_else(|_| DEFAULT_FILE.to_owned());
    from_environment_file(&fs::read_to_string(path).ok()?)
}

/// The value of the last `MULTIHOME_UPLINKS=` assignment, quotes removed, as systemd reads an
/// EnvironmentFile (comments start with `#` or `;`).
fn from_environment_file(text: &str) -> Option<String> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#') && !l.starts_with(';'))
        .filter_map(|l| {
            l.strip_prefix("MULTIHOME_UPLINKS")?
                .trim_start()
                .strip_prefix('=')
        })
        .map(|v| {
            let v = v.trim();
            let unquoted = ['"', '\'']
                .iter()
                .find_map(|q| v.strip_prefix(*q)?.strip_suffix(*q));
            unquoted.unwrap_or(v).to_owned()
        })
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_last_assignment_of_the_environment_file() {
        // The shipped file names no uplink: its example is a comment.
        let example = include_str!("../../dist/multihome.default");
        assert!(example.contains("\n#MULTIHOME_UPLINKS=\"vlan101 vlan102\"\n"));
        assert_eq!(from_environment_file(example), None);
        let text =
            "# MULTIHOME_UPLINKS=old\nMULTIHOME_UPLINKS='a b'\n MULTIHOME_UPLINKS = c,d=1102 \n";
        assert_eq!(from_environment_file(text).as_deref(), Some("c,d=1102"));
        assert_eq!(from_environment_file("MULTIHOME_OPTS=x\n"), None);
        assert_eq!(from_environment_file("MULTIHOME_UPLINKSX=a\n"), None);
    }
}
