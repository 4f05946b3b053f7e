//! How a command fails, in one story. Inside, errors are `anyhow::Error` with the context of what
//! was being done, except where a caller branches on the kind of failure: there they are typed
//! (`netlink::Error` carries the kernel's errno, `config::ConfigError` the bad input). At a
//! command's edge they become a `Fatal`: bad input and missing privileges by `Fatal::usage`
//! (exit status 2, the operator has to change something), everything else by `?` (status 1).
//! Either way the operator reads one line, the error and its causes joined by colons.

use std::fmt;

/// What ends a command: the line printed and the exit status.
#[derive(Debug)]
pub(crate) struct Fatal {
    pub(crate) status: u8,
    pub(crate) message: String,
}

impl Fatal {
    /// Bad input or a missing privilege: exit status 2.
    pub(crate) fn usage(message: impl fmt::Display) -> Fatal {
        Fatal {
            status: 2,
            message: message.to_string(),
        }
    }
}

/// Any other error, typed or `anyhow`, with its chain of causes: exit status 1.
impl<E: Into<anyhow::Error>> From<E> for Fatal {
    fn from(err: E) -> Fatal {
        Fatal {
            status: 1,
            message: format!("{:#}", err.into()),
        }
    }
}
