//! The test count `cargo xtask test` closes with, summed from cargo test's `test result:` lines
//! (one per test binary and doc-test run), so CI reads one plain `N passed, N failed` line.

use std::fmt;
use std::ops::AddAssign;

/// Tests counted so far; ignored tests are reported as skipped.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tally {
    pub passed: u64,
    pub failed: u64,
    pub skipped: u64,
}

impl Tally {
    /// The counts of one libtest summary line, e.g.
    /// `test result: ok. 5 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`;
    /// `None` for any other line.
    pub(crate) fn parse(line: &str) -> Option<Tally> {
        let rest = line.trim().strip_prefix("test result: ")?;
        let words: Vec<&str> = rest
            .split([' ', ';', '.'])
            .filter(|w| !w.is_empty())
            .collect();
        let mut tally = Tally::default();
        let mut seen = false;
        for pair in words.windows(2) {
            let Ok(n) = pair[0].parse::<u64>() else {
                continue;
            };
            let slot = match pair[1] {
                "passed" => &mut tally.passed,
                "failed" => &mut tally.failed,
                "ignored" => &mut tally.skipped,
                _ => continue,
            };
            *slot += n;
            seen = true;
        }
        seen.then_some(tally)
    }
}

impl AddAssign for Tally {
    fn add_assign(&mut self, other: Tally) {
        self.passed += other.passed;
        self.failed += other.failed;
        self.skipped += other.skipped;
    }
}

impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} passed, {} failed, {} skipped",
            self.passed, self.failed, self.skipped
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libtest_summary_lines_are_counted() {
        let ok = "test result: ok. 12 passed; 0 failed; 2 ignored; 0 measured; 0 filtered out; \
                  finished in 0.03s";
        assert_eq!(
            Tally::parse(ok),
            Some(Tally {
                passed: 12,
                failed: 0,
                skipped: 2
            })
        );
        let failed = "test result: FAILED. 3 passed; 1 failed; 0 ignored; 0 measured; \
                      5 filtered out; finished in 1.50s";
        assert_eq!(
            Tally::parse(failed),
            Some(Tally {
                passed: 3,
                failed: 1,
                skipped: 0
            })
        );
    }

    #[test]
    fn other_lines_are_not_counted() {
        assert_eq!(Tally::parse("test frame::tests::parses ... ok"), None);
        assert_eq!(Tally::parse("running 3 tests"), None);
        assert_eq!(Tally::parse("test result: weird"), None);
    }

    #[test]
    fn tallies_sum_and_print_as_the_plain_ci_line() {
        let mut total = Tally::default();
        total += Tally {
            passed: 2,
            failed: 1,
            skipped: 0,
        };
        total += Tally {
            passed: 5,
            failed: 0,
            skipped: 1,
        };
        assert_eq!(total.to_string(), "7 passed, 1 failed, 1 skipped");
    }
}
