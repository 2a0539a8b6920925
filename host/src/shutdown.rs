//! One shutdown signal shared by every task (the mini-redis pattern): the
//! server flips it once; listeners stop accepting, sessions finish their
//! current reply and say 421 4.3.0.

use tokio::sync::watch;

/// Sends the signal.
#[derive(Debug)]
pub struct Trigger(watch::Sender<bool>);

/// Waits for the signal; cheap to clone, one per task.
#[derive(Debug, Clone)]
pub struct Shutdown(watch::Receiver<bool>);

/// A connected pair.
pub fn channel() -> (Trigger, Shutdown) {
    let (tx, rx) = watch::channel(false);
    (Trigger(tx), Shutdown(rx))
}

impl Trigger {
    /// Tells every task to stop.
    pub fn fire(&self) {
        let _ = self.0.send(true);
    }
}

impl Shutdown {
    /// Whether the signal has been given.
    pub fn is_set(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves when the signal is given (or the trigger is dropped).
    pub async fn wait(&mut self) {
        let _ = self.0.wait_for(|&stop| stop).await;
    }
}
