//! Typed audit records: what each kind of record says, as structs instead of string keys.
//!
//! The log stores a record's `kind` as text and its `detail` as JSON (so the hash chain covers
//! exactly what was written, and a log written by an older ferry still reads). Writers build a
//! detail from one of the structs below and readers parse it back into the same struct, so a
//! field is spelled in one place: `RunFinished::refused`, never `detail["refused"]`.

use serde::{Deserialize, Serialize};

use crate::audit::{Entry, Record};
use crate::deployments::{Recorded, Removal};
use crate::docker::{Action, ContainerDetails};
use crate::report::Status;

/// What a record is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A run begins (before anything touches a target).
    RunStarted,
    /// One target's outcome.
    TargetOutcome,
    /// A run's end: counts, a refusal, or a deployment's record.
    RunFinished,
    /// An environment lock was taken.
    LockAcquired,
    /// An environment lock was released.
    LockReleased,
    /// An expired or live lock was taken over.
    LockBroken,
    /// Host keys were recorded by `ferry trust`.
    TrustRecorded,
    /// A synthetic record of `ferry audit bench`.
    Bench,
    /// A notification of the run was sent, or could not be (issue 16).
    Notified,
    /// A deploy hook (`[hooks]`) ended on the runner.
    HookFinished,
}

impl Kind {
    /// Every kind, for parsing.
    const ALL: [Kind; 10] = [
        Kind::RunStarted,
        Kind::TargetOutcome,
        Kind::RunFinished,
        Kind::LockAcquired,
        Kind::LockReleased,
        Kind::LockBroken,
        Kind::TrustRecorded,
        Kind::Bench,
        Kind::Notified,
        Kind::HookFinished,
    ];

    /// The word stored in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::RunStarted => "run_started",
            Kind::TargetOutcome => "target_outcome",
            Kind::RunFinished => "run_finished",
            Kind::LockAcquired => "lock_acquired",
            Kind::LockReleased => "lock_released",
            Kind::LockBroken => "lock_broken",
            Kind::TrustRecorded => "trust_recorded",
            Kind::Bench => "bench",
            Kind::Notified => "notified",
            Kind::HookFinished => "hook_finished",
        }
    }

    /// The kind of a stored word; `None` for a word this ferry does not know.
    pub fn parse(word: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|k| k.as_str() == word)
    }
}

/// `run_started`: what is about to run.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunStarted {
    /// `ferry run`: the command line, masked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command_line: Option<String>,
    /// Deployments: the image reference planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Deployments: `--force`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force: Option<bool>,
    /// Deployments: the lifecycle verdict, a rollback's target, a promotion's source.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<serde_json::Value>,
}

/// `target_outcome`: how one target ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetOutcome {
    /// Final state.
    pub status: Status,
    /// Exit code, when the command exited.
    pub exit_code: Option<u32>,
    /// Signal, when it was killed.
    pub signal: Option<String>,
    /// What went wrong (masked).
    pub error: Option<String>,
    /// Time on the target.
    pub ms: u64,
    /// The last output lines (masked).
    pub tail: Vec<String>,
    /// Deployments: what happened to the container.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    /// Deployments: the running container, after a success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<Box<ContainerDetails>>,
    /// Deployments: the failed container's last log lines (masked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub logs: Option<Vec<String>>,
}

/// `run_finished`: how a run ended.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunFinished {
    /// Targets that succeeded.
    #[serde(default)]
    pub ok: usize,
    /// Targets that failed in any way.
    #[serde(default)]
    pub failed: usize,
    /// Targets never started.
    #[serde(default)]
    pub skipped: usize,
    /// Whether a signal stopped it.
    #[serde(default)]
    pub interrupted: bool,
    /// Wall time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ms: Option<u64>,
    /// Why the rollout stopped early.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    /// Refused before anything changed (a held lock, an unreachable target): why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
    /// A freeze window that began after the run started (during `--lock-wait` or the prompt)
    /// and that `--override-freeze --reason` overrode: the window and the reason. One in force
    /// when the run started is in `run_started`'s notes instead.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "readable")]
    pub freeze_override: Option<crate::freeze::Override>,
    /// Deployments: what ran where (read back by status, rollback, promote, the lifecycle).
    /// One this ferry cannot read (another version's shape) reads as none: the run's counts
    /// and outcome still show in `history`, and nothing acts on the unreadable part.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "readable")]
    pub deployment: Option<Recorded>,
    /// `ferry remove`: what was removed where (read back by status, rollback and promote, so
    /// that they no longer expect the app there).
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "readable")]
    pub removal: Option<Removal>,
    /// Image retention per target (`ferry prune`, and a deployment's step after its rollout):
    /// what was removed (or would be, a dry run), the bytes freed, what went wrong.
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "readable")]
    pub retention: Option<std::collections::BTreeMap<String, crate::retention::Pruned>>,
}

/// A value of type `T`, or none when it does not have `T`'s shape.
fn readable<'de, D, T>(deserializer: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: serde::de::DeserializeOwned,
{
    let value = serde_json::Value::deserialize(deserializer)?;
    Ok(serde_json::from_value(value).ok())
}

/// `hook_finished`: how a deploy hook (`[hooks]`) ended on the runner; also the
/// `hook_finished` event (`--output json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HookFinished {
    /// `pre_deploy`, `post_deploy` or `failed`.
    pub hook: crate::hooks::HookKind,
    /// The path as the inventory writes it.
    pub path: String,
    /// `FERRY_OUTCOME` as the hook saw it (`post_deploy`, `failed`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outcome: Option<crate::hooks::RunOutcome>,
    /// `ok`, `failed` (non-zero exit, a signal), `timed_out`, `error` (could not be started).
    pub status: crate::hooks::HookStatus,
    /// Exit code, when it exited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
    /// Signal name, when it was killed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// What went wrong (masked): `exited 1`, `still running after 5m: killed`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Wall time.
    pub ms: u64,
    /// The last output lines, both streams (masked).
    #[serde(default)]
    pub tail: Vec<String>,
}

/// `lock_acquired`, `lock_released`, `lock_broken`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LockChange {
    /// When the lock expires (acquired).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires: Option<String>,
    /// The holder's message (acquired by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// `expired`, `forced` or `released` (broken, released by hand).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The lock that was there before (broken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<String>,
    /// Targets where the lock could not be removed (released by a run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub not_released: Option<Vec<String>>,
    /// A quick stop gave up waiting for the release (the locks expire after their TTL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub release_timed_out: Option<bool>,
    /// Each target's fencing number for this acquisition (acquired): it grows with every
    /// acquisition of the environment's lock on that target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fences: Option<std::collections::BTreeMap<String, u64>>,
}

/// Builds an entry of `kind` with a typed detail; the caller fills in the rest.
pub fn entry(kind: Kind, detail: &impl Serialize) -> Entry {
    Entry {
        kind: kind.as_str().to_string(),
        // A detail struct always serializes (plain data, string keys).
        detail: serde_json::to_value(detail).unwrap_or_default(),
        ..Entry::default()
    }
}

impl Record {
    /// The record's kind, when this ferry knows it.
    pub fn kind(&self) -> Option<Kind> {
        Kind::parse(&self.entry.kind)
    }

    /// The detail of a `run_finished` record.
    pub fn run_finished(&self) -> Option<RunFinished> {
        self.entry.run_finished()
    }

    /// The detail of a `run_started` record.
    pub fn run_started(&self) -> Option<RunStarted> {
        (self.kind() == Some(Kind::RunStarted))
            .then(|| serde_json::from_value(self.entry.detail.clone()).ok())
            .flatten()
    }
}

impl Entry {
    /// The detail of a `run_finished` entry.
    pub fn run_finished(&self) -> Option<RunFinished> {
        (Kind::parse(&self.kind) == Some(Kind::RunFinished))
            .then(|| serde_json::from_value(self.detail.clone()).ok())
            .flatten()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_round_trip_their_words() {
        for kind in Kind::ALL {
            assert_eq!(Kind::parse(kind.as_str()), Some(kind));
        }
        assert_eq!(Kind::parse("something_new"), None);
    }

    #[test]
    fn a_deployment_of_another_shape_leaves_the_counts_readable() {
        let entry = Entry {
            kind: "run_finished".into(),
            detail: serde_json::json!({ "ok": 1, "failed": 2, "deployment": { "image": 7 } }),
            ..Entry::default()
        };
        let read = entry.run_finished().unwrap();
        assert_eq!((read.ok, read.failed, read.deployment), (1, 2, None));
    }

    #[test]
    fn a_refusal_reads_back_as_written() {
        let written = RunFinished { refused: Some("locked".into()), ..RunFinished::default() };
        let entry = entry(Kind::RunFinished, &written);
        assert_eq!(entry.detail["refused"], "locked");
        assert_eq!(entry.run_finished(), Some(written));
    }

    #[test]
    fn an_older_detail_without_optional_fields_still_reads() {
        let entry = Entry {
            kind: "run_finished".into(),
            detail: serde_json::json!({ "ok": 2, "failed": 0, "skipped": 0, "interrupted": false, "ms": 5, "stopped": null }),
            ..Entry::default()
        };
        let read = entry.run_finished().unwrap();
        assert_eq!((read.ok, read.ms, read.stopped), (2, Some(5), None));
    }
}
