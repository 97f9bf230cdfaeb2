//! A queue as the host gave it: its source and its two closures, with their types kept, so that
//! the job loop calls them directly (inlined) rather than through a pointer.
//!
//! The bounds on the closures are stated once, on [`Handlers`]'s implementation; the rest of
//! the crate is generic over `H: Handlers`.

use std::marker::PhantomData;

use crate::error::JobError;
use crate::lifecycle::{BoxError, Hooks};
use crate::source::{JobSource, WorkerInfo};

/// A queue's source, `init` and `exec`, with their types, and its lifecycle hooks (set in
/// `build()`, once their state type is checked).
pub(crate) struct QueueDef<S, St, I, X> {
    source: S,
    init: I,
    exec: X,
    hooks: Hooks<St>,
    _state: PhantomData<fn() -> St>,
}

impl<S, St, I, X> QueueDef<S, St, I, X> {
    pub(crate) fn new(source: S, init: I, exec: X) -> Self {
        QueueDef {
            source,
            init,
            exec,
            hooks: Hooks::default(),
            _state: PhantomData,
        }
    }
}

/// What the job loop needs of a queue.
pub(crate) trait Handlers: Send + Sync + 'static {
    /// Where the jobs come from.
    type Source: JobSource;
    /// A worker's state, built by `init`.
    type State: 'static;

    fn source(&self) -> &Self::Source;

    /// The queue's health check and carry-over.
    fn hooks(&self) -> &Hooks<Self::State>;

    fn hooks_mut(&mut self) -> &mut Hooks<Self::State>;

    /// Builds a worker's state (the host's `init`).
    fn init(&self, worker: &WorkerInfo) -> Result<Self::State, BoxError>;

    /// Runs one job (the host's `exec`).
    fn exec(
        &self,
        state: &mut Self::State,
        job: &<Self::Source as JobSource>::Job,
    ) -> Result<<Self::Source as JobSource>::Output, JobError>;
}

impl<S, St, E, I, X> Handlers for QueueDef<S, St, I, X>
where
    S: JobSource,
    St: 'static,
    E: Into<BoxError> + 'static,
    I: Fn(&WorkerInfo) -> Result<St, E> + Send + Sync + 'static,
    X: Fn(&mut St, &S::Job) -> Result<S::Output, JobError> + Send + Sync + 'static,
{
    type Source = S;
    type State = St;

    #[inline(always)]
    fn source(&self) -> &S {
        &self.source
    }

    fn hooks(&self) -> &Hooks<St> {
        &self.hooks
    }

    fn hooks_mut(&mut self) -> &mut Hooks<St> {
        &mut self.hooks
    }

    fn init(&self, worker: &WorkerInfo) -> Result<St, BoxError> {
        (self.init)(worker).map_err(Into::into)
    }

    #[inline(always)]
    fn exec(&self, state: &mut St, job: &S::Job) -> Result<S::Output, JobError> {
        (self.exec)(state, job)
    }
}
