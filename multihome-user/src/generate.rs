//! `multihome generate`: the man pages and shell completions, rendered from the clap
//! definitions in `cli` so that they never drift from what the binary accepts. Hidden from
//! `--help`: it is how `cargo xtask install` produces them, not an operator's command.

use std::process::ExitCode;

use clap::CommandFactory;

use crate::cli::{Cli, GenerateArgs, Generated};
use crate::Fatal;

pub(crate) fn main(args: GenerateArgs) -> Result<ExitCode, Fatal> {
    match args.what {
        Generated::Man { dir } => {
            std::fs::create_dir_all(&dir)
                .and_then(|()| clap_mangen::generate_to(Cli::command(), &dir))
                .map_err(|err| {
                    Fatal::usage(format!(
                        "cannot write man pages into {}: {err} (give a writable directory)",
                        dir.display()
                    ))
                })?;
        }
        Generated::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "multihome",
                &mut std::io::stdout(),
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn man_pages_cover_every_visible_command() {
        let dir = std::env::temp_dir().join(format!("mh-man-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        main(GenerateArgs {
            what: Generated::Man { dir: dir.clone() },
        })
        .unwrap();
        let mut pages: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        pages.sort();
        assert_eq!(
            pages,
            [
                "multihome-check.1",
                "multihome-cleanup.1",
                "multihome-exec.1",
                "multihome-reload.1",
                "multihome-run.1",
                "multihome-status.1",
                "multihome.1"
            ]
        );
        let run = std::fs::read_to_string(dir.join("multihome-run.1")).unwrap();
        assert!(run.contains("keep\\-on\\-exit"), "{run}");
        assert!(
            run.contains("pending job") && run.contains("SIGHUP reloads"),
            "{run}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
