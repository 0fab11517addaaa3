//! ^C, SIGTERM and SIGHUP during a launch: the moments it must roll back instead of leaving
//! instances behind. Listening starts before anything exists, so no early signal kills the
//! process half-way; if the handlers cannot be installed, the launch does not start at all. A
//! signal never cuts a provider call short (an instance whose RunInstances was dropped mid-flight
//! could escape the record): the launch notices at its next wait, and rolls back from there.

use std::time::Duration;

use crate::core::error::Error;

pub use crate::core::error::Signal;

/// Turns `true` when the client a request serves has gone (the class service's connection).
pub type Hangup = tokio::sync::watch::Receiver<bool>;

#[derive(Clone)]
pub struct Interrupt {
    rx: tokio::sync::watch::Receiver<Option<Signal>>,
}

impl Interrupt {
    /// Starts listening for this process's signals, and for `hangup` (a client gone) where
    /// there is one. Must be called inside the runtime. Fails if a handler cannot be
    /// installed: a launch must not run without the means to roll back.
    pub fn listen(hangup: Option<&Hangup>) -> Result<Self, Error> {
        use tokio::signal::unix::{SignalKind, signal};
        let (tx, rx) = tokio::sync::watch::channel(None);
        let install = |kind: SignalKind, name: &str| {
            signal(kind).map_err(|e| {
                Error::runtime(format!(
                    "cannot listen for {name}, so an interrupted launch could not roll back; not launching"
                ))
                .with_source(e)
            })
        };
        // Registered here, synchronously: from now on these signals are ours.
        let mut int = install(SignalKind::interrupt(), "SIGINT")?;
        let mut term = install(SignalKind::terminate(), "SIGTERM")?;
        let mut hup = install(SignalKind::hangup(), "SIGHUP")?;
        let mut gone = hangup.cloned();
        tokio::spawn(async move {
            loop {
                let client_gone = async {
                    let went = match &mut gone {
                        Some(g) => g.wait_for(|gone| *gone).await.is_ok(),
                        None => false,
                    };
                    if !went {
                        // No client, or the request is over: nothing more comes from there.
                        std::future::pending::<()>().await;
                    }
                };
                let (why, client) = tokio::select! {
                    _ = int.recv() => (Signal::Interrupt, false),
                    _ = term.recv() => (Signal::Terminate, false),
                    _ = hup.recv() => (Signal::Hangup, false),
                    () = client_gone => (Signal::Hangup, true),
                };
                if client {
                    // A client goes only once.
                    gone = None;
                }
                if tx.send(Some(why)).is_err() {
                    return;
                }
            }
        });
        Ok(Self { rx })
    }

    /// An error if a signal has come.
    pub fn check(&self) -> Result<(), Error> {
        match *self.rx.borrow() {
            Some(why) => Err(Error::interrupted(why)),
            None => Ok(()),
        }
    }

    /// Runs `fut` unless, or until, a signal comes.
    pub async fn race<T>(&self, fut: impl Future<Output = Result<T, Error>>) -> Result<T, Error> {
        self.check()?;
        let mut rx = self.rx.clone();
        // The signal is copied out of the channel inside, so nothing borrowed from it is held
        // across an await (the future stays Send).
        let signalled = async move {
            match rx.wait_for(Option::is_some).await {
                Ok(why) => Some((*why).unwrap_or(Signal::Interrupt)),
                Err(_) => None,
            }
        };
        tokio::select! {
            biased;
            why = signalled => match why {
                Some(why) => Err(Error::interrupted(why)),
                // The listener is gone: no signal can come any more.
                None => std::future::pending().await,
            },
            r = fut => r,
        }
    }

    pub async fn sleep(&self, d: Duration) -> Result<(), Error> {
        self.race(async {
            tokio::time::sleep(d).await;
            Ok(())
        })
        .await
    }
}
