//! Calls in flight: at most `INVITATIONS_MAX_CONCURRENT_REQUESTS` on the replica and
//! `INVITATIONS_MAX_CONCURRENT_REQUESTS_PER_CALLER` for one caller. A slot is taken only
//! once the request is complete and authenticated (by the handler), so a client that sends
//! headers and no message holds none, and a refused call is answered at once instead of
//! queued: under overload a fast refusal lets clients back off or try another replica.
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::auth::Caller;
use crate::domain::Error;
use crate::domain::{EnterpriseId, UserRef};

type CallerKey = (Option<EnterpriseId>, UserRef);

#[derive(Debug)]
pub struct Admission {
    replica: Arc<Semaphore>,
    per_caller_limit: usize,
    per_caller: Mutex<HashMap<CallerKey, usize>>,
}

/// A call's place; given back when dropped.
#[derive(Debug)]
pub struct Slot {
    admission: Arc<Admission>,
    caller: CallerKey,
    _replica: OwnedSemaphorePermit,
}

impl Admission {
    pub fn new(limit: usize, per_caller_limit: usize) -> Arc<Self> {
        Arc::new(Self {
            replica: Arc::new(Semaphore::new(limit)),
            per_caller_limit,
            per_caller: Mutex::default(),
        })
    }

    fn counts(&self) -> std::sync::MutexGuard<'_, HashMap<CallerKey, usize>> {
        // A poisoned lock only means a panic between two updates of plain counts.
        self.per_caller
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A slot for `caller`, or the refusal to answer: the caller's own limit first, so a
    /// caller over it never takes one of the replica's slots.
    pub fn admit(self: &Arc<Self>, caller: &Caller) -> Result<Slot, Error> {
        let key = (caller.enterprise, caller.subject);
        {
            let mut counts = self.counts();
            let in_flight = counts.entry(key).or_insert(0);
            if *in_flight >= self.per_caller_limit {
                return Err(Error::CallerOverloaded {
                    limit: self.per_caller_limit,
                });
            }
            *in_flight += 1;
        }
        match self.replica.clone().try_acquire_owned() {
            Ok(permit) => Ok(Slot {
                admission: self.clone(),
                caller: key,
                _replica: permit,
            }),
            Err(_) => {
                self.release(&key);
                Err(Error::Overloaded)
            }
        }
    }

    fn release(&self, key: &CallerKey) {
        let mut counts = self.counts();
        if let Some(in_flight) = counts.get_mut(key) {
            *in_flight -= 1;
            if *in_flight == 0 {
                counts.remove(key);
            }
        }
    }

    /// Callers with a call in flight (for tests: the map does not grow with past callers).
    pub fn callers_in_flight(&self) -> usize {
        self.counts().len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.admission.release(&self.caller);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn caller(subject: u128) -> Caller {
        Caller {
            subject: UserRef::from_uuid(uuid::Uuid::from_u128(subject)),
            enterprise: Some(EnterpriseId::from_uuid(uuid::Uuid::from_u128(1))),
            capabilities: Default::default(),
            verified_email: None,
        }
    }

    #[test]
    fn one_caller_cannot_take_the_replicas_slots() {
        let admission = Admission::new(3, 2);
        let (noisy, quiet) = (caller(1), caller(2));
        let first = admission.admit(&noisy).expect("first");
        let _second = admission.admit(&noisy).expect("second");
        assert!(matches!(
            admission.admit(&noisy),
            Err(Error::CallerOverloaded { limit: 2 })
        ));
        // The refusal took no slot: another caller still gets the third.
        let _third = admission.admit(&quiet).expect("another caller");
        assert!(matches!(admission.admit(&quiet), Err(Error::Overloaded)));
        drop(first);
        let _again = admission
            .admit(&noisy)
            .expect("a slot given back is free again");
    }

    #[test]
    fn slots_given_back_leave_no_trace() {
        let admission = Admission::new(8, 8);
        for subject in 0..100 {
            drop(admission.admit(&caller(subject)).expect("free"));
        }
        assert_eq!(admission.callers_in_flight(), 0);
    }
}
