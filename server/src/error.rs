//! The error of the daemon's setup and lifetime (`run`, the data directory, keys and
//! certificates, the command line): one message that says what failed and where (the file,
//! the setting or the task) and why. Errors a peer causes are `ErrorBody`s, never this.

/// What went wrong starting or running the daemon.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A step that failed, and the error beneath it (its message follows the step's).
    #[error("{what}: {cause}")]
    Failed {
        /// The step, naming its file or setting: "cannot read /etc/tally/ca.pem".
        what: String,
        /// Why it failed.
        cause: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A problem with no error beneath it: a file that holds no certificate, a data
    /// directory another daemon holds.
    #[error("{0}")]
    Invalid(String),
    /// An I/O error no step named.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// A store error no step named.
    #[error(transparent)]
    Store(#[from] crate::store::StoreError),
    /// A TLS configuration rustls refused.
    #[error(transparent)]
    Tls(#[from] rustls::Error),
    /// A task the daemon cannot run without (the engine, the notifier) ended.
    #[error(
        "the {task} task ended unexpectedly ({why}); tallyd stopped so that it can be restarted"
    )]
    TaskEnded {
        /// Which task.
        task: String,
        /// Its panic message, or how else it ended.
        why: String,
    },
}

/// A result whose error is the daemon's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Names the step that failed, as `anyhow::Context` does, for any error.
pub trait Context<T> {
    /// Wraps the error in [`Error::Failed`] with `what`.
    fn context(self, what: impl Into<String>) -> Result<T>;
    /// Like [`context`](Self::context), building the text only on failure.
    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T>;
}

impl<T, E: std::error::Error + Send + Sync + 'static> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl Into<String>) -> Result<T> {
        self.map_err(|cause| Error::Failed {
            what: what.into(),
            cause: Box::new(cause),
        })
    }

    fn with_context<S: Into<String>>(self, what: impl FnOnce() -> S) -> Result<T> {
        self.map_err(|cause| Error::Failed {
            what: what().into(),
            cause: Box::new(cause),
        })
    }
}

/// Returns an [`Error::Invalid`] with a formatted message.
macro_rules! bail {
    ($($arg:tt)*) => {
        return Err($crate::error::Error::Invalid(format!($($arg)*)))
    };
}
pub(crate) use bail;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_of_a_chain_is_in_the_message() {
        let read: std::result::Result<(), _> = Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            "no such file",
        ));
        let err = read
            .context("cannot read /x/ca.pem")
            .context("borrow.signing_cert")
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "borrow.signing_cert: cannot read /x/ca.pem: no such file"
        );
    }

    #[test]
    fn bail_returns_the_formatted_message() {
        fn locked() -> Result<()> {
            bail!("the data directory {} is in use", "/var/lib/tally");
        }
        assert_eq!(
            locked().unwrap_err().to_string(),
            "the data directory /var/lib/tally is in use"
        );
    }
}
