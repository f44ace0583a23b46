//! Tables for this crate's tests: a Delta table written by hand, and the ways to compare
//! tables (every file's bytes; the snapshot deltalake reads).

use std::collections::BTreeMap;
use std::path::{Path as FsPath, PathBuf};

use serde_json::json;

use crate::log::commit_file_name;

/// A Delta table written by hand: a real log (protocol, metadata, adds, removes, commitInfo)
/// over data files of known bytes (replication copies bytes; it never decodes Parquet).
pub(crate) struct HandTable {
    pub(crate) dir: PathBuf,
    pub(crate) next: u64,
    pub(crate) live: Vec<String>,
}

const SCHEMA: &str =
    r#"{"type":"struct","fields":[{"name":"n","type":"long","nullable":true,"metadata":{}}]}"#;

impl HandTable {
    pub(crate) fn create(dir: &FsPath) -> Self {
        std::fs::create_dir_all(dir.join("_delta_log")).unwrap();
        let mut t = Self {
            dir: dir.to_path_buf(),
            next: 0,
            live: Vec::new(),
        };
        t.commit(vec![
            json!({"commitInfo": {"timestamp": 1_000, "operation": "CREATE TABLE"}}),
            json!({"protocol": {"minReaderVersion": 1, "minWriterVersion": 2}}),
            json!({"metaData": {"id": "5f0c9c5e-0000-4000-8000-000000000001",
                "format": {"provider": "parquet", "options": {}}, "schemaString": SCHEMA,
                "partitionColumns": [], "configuration": {}, "createdTime": 1_000}}),
        ]);
        t
    }

    pub(crate) fn commit(&mut self, actions: Vec<serde_json::Value>) -> u64 {
        let v = self.next;
        let text: String = actions.iter().map(|a| format!("{a}\n")).collect();
        std::fs::write(self.dir.join("_delta_log").join(commit_file_name(v)), text).unwrap();
        self.next += 1;
        v
    }

    /// A commit adding `files` new data files of `bytes` bytes each (and removing the oldest
    /// live file when `remove_one`).
    pub(crate) fn append(&mut self, files: usize, bytes: usize, remove_one: bool) -> u64 {
        let v = self.next;
        let mut actions = vec![json!({"commitInfo": {"timestamp": 1_000 + v as i64 * 1_000,
            "operation": "WRITE", "tidemark": {"pipeline_id": "p", "epoch": v}}})];
        for i in 0..files {
            // A name that needs percent-encoding in the log.
            let name = format!("part {v}-{i}%.parquet");
            let content: Vec<u8> = (0..bytes)
                .map(|b| (b as u64 * 7 + v * 13 + i as u64) as u8)
                .collect();
            std::fs::write(self.dir.join(&name), content).unwrap();
            let encoded = name.replace('%', "%25").replace(' ', "%20");
            actions.push(
                json!({"add": {"path": encoded, "size": bytes, "partitionValues": {},
                "modificationTime": 1, "dataChange": true,
                "stats": json!({"numRecords": 10}).to_string()}}),
            );
            self.live.push(name);
        }
        if remove_one && !self.live.is_empty() {
            let gone = self.live.remove(0);
            let encoded = gone.replace('%', "%25").replace(' ', "%20");
            actions.push(
                json!({"remove": {"path": encoded, "dataChange": true, "deletionTimestamp": 1}}),
            );
        }
        self.commit(actions)
    }
}

/// Every file under `dir`, relative, with its bytes.
pub(crate) fn tree(dir: &FsPath) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in entries {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

/// The files a table's live snapshot at each version refers to, as deltalake reads them.
pub(crate) async fn deltalake_files(dir: &FsPath, version: u64) -> Vec<String> {
    let url = url::Url::from_directory_path(dir).unwrap();
    let t = deltalake::open_table_with_version(url, version)
        .await
        .unwrap_or_else(|e| panic!("deltalake opens {} at {version}: {e}", dir.display()));
    let mut files: Vec<String> = t
        .get_file_uris()
        .unwrap()
        .map(|u| u.rsplit('/').next().unwrap().to_string())
        .collect();
    files.sort();
    files
}
