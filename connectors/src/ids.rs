//! Typed numbers where numbers of different meaning meet: an [`Epoch`] (the protocol's unit,
//! also the Delta `txn` version of a pipeline) is never a [`TableVersion`] (a `_delta_log`
//! commit's number). Offsets stay Kafka's own `i64` everywhere.
//!
//! Delta's `txn` action stores the version as an `i64`; [`Epoch::to_txn`] and
//! [`Epoch::from_txn`] are the one place that conversion happens.

use std::fmt;

use serde::{Deserialize, Serialize};

/// An epoch of the protocol: 1, 2, 3, ... (0: none yet). In the table it is the pipeline's
/// `txn` version and the `epoch` of each commitInfo (a JSON number, as before).
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Epoch(u64);

impl Epoch {
    /// No epoch yet (nothing committed or checkpointed).
    pub const ZERO: Epoch = Epoch(0);

    /// Epoch number `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// The epoch after this one.
    pub const fn next(self) -> Self {
        Self(self.0 + 1)
    }

    /// As a Delta `txn` version.
    pub fn to_txn(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }

    /// From a Delta `txn` version (a negative one, which Tidemark never writes, is epoch 0).
    pub fn from_txn(txn: i64) -> Self {
        Self(u64::try_from(txn).unwrap_or(0))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl From<u64> for Epoch {
    fn from(n: u64) -> Self {
        Self(n)
    }
}

/// A Delta table version (the number of a `_delta_log` commit file). Never an epoch: the
/// table also holds commits of other writers, so versions and epochs drift apart.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct TableVersion(u64);

impl TableVersion {
    /// Version `n`.
    pub const fn new(n: u64) -> Self {
        Self(n)
    }

    /// The number.
    pub const fn get(self) -> u64 {
        self.0
    }

    /// As the checkpoint store records it (`i64`, with -1 for none: see its record format).
    pub fn to_stored(version: Option<Self>) -> Option<i64> {
        version.map(|v| i64::try_from(v.0).unwrap_or(i64::MAX))
    }

    /// From the checkpoint store's form.
    pub fn from_stored(stored: Option<i64>) -> Option<Self> {
        stored.and_then(|v| u64::try_from(v).ok()).map(Self)
    }
}

impl fmt::Display for TableVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::{Epoch, TableVersion};

    #[test]
    fn table_versions_round_trip_through_the_stored_form() {
        for v in [
            None,
            Some(TableVersion::new(0)),
            Some(TableVersion::new(42)),
        ] {
            assert_eq!(TableVersion::from_stored(TableVersion::to_stored(v)), v);
        }
        assert_eq!(TableVersion::from_stored(Some(-1)), None);
    }

    #[test]
    fn epochs_round_trip_through_txn_versions_and_json() {
        for n in [0u64, 1, 7, i64::MAX as u64] {
            let e = Epoch::new(n);
            assert_eq!(Epoch::from_txn(e.to_txn()), e);
            let json = serde_json::to_string(&e).unwrap();
            assert_eq!(json, n.to_string());
            assert_eq!(serde_json::from_str::<Epoch>(&json).unwrap(), e);
        }
        assert_eq!(Epoch::from_txn(-1), Epoch::ZERO);
        assert_eq!(Epoch::new(4).next(), Epoch::new(5));
    }
}
