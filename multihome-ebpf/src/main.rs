// Placeholder until the TC program lands.
fn main() {}
