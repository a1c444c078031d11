//! Undo steps of a half-done ADD (the reference plugins' `success := false;
//! defer rollback`): each step registers its undo before or right after it
//! changes something; on failure they run in reverse, unless committed.

use crate::warn;

/// An undo step's failure, kept with its type and source for the log.
pub type UndoError = Box<dyn std::error::Error>;

type Undo = Box<dyn FnOnce() -> Result<(), UndoError>>;

/// The undo steps registered so far.
#[derive(Default)]
pub struct Rollback {
    steps: Vec<(&'static str, Undo)>,
}

impl Rollback {
    /// No steps yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers the undo of `what`.
    pub fn push<E: Into<UndoError>>(
        &mut self,
        what: &'static str,
        f: impl FnOnce() -> Result<(), E> + 'static,
    ) {
        self.steps
            .push((what, Box::new(move || f().map_err(Into::into))));
    }

    /// Keeps every change: nothing is undone.
    pub fn commit(mut self) {
        self.steps.clear();
    }
}

impl Drop for Rollback {
    fn drop(&mut self) {
        while let Some((what, f)) = self.steps.pop() {
            if let Err(e) = f() {
                warn!(
                    "rollback of {what} failed: {}",
                    crate::cni::error::chain(&*e)
                );
            }
        }
    }
}
