//! The Delta destination's group index kept on disk: per data file, the runs of rows that hold
//! one group value (by the value's hash), sorted by hash, in an unlinked temporary file. Only
//! every [`BLOCK`]-th run's hash stays in memory, so what a merge keeps while the destination is
//! open no longer grows with the table: 4 bytes per [`BLOCK`] runs, where it was 12 bytes per run
//! (one run per response and file: about 240 MB for the two indexed tables at 10,000,000
//! responses, now under 1 MB; the file holds the 12 bytes instead).
//!
//! Owns: the temporary file and the lookup of hashes in it. Must not: know about Delta tables,
//! Parquet or what a group is (`delta.rs` reads the column and decides what to look up).
//!
//! The file lives in the system's temporary directory (`TMPDIR`), unlinked from the start: the
//! kernel removes it when the destination is dropped or the process ends, even by `kill -9`.
//! Lookups read it with `pread` (the operating system's page cache holds what is hot), which
//! does not count towards the process's resident memory.

use std::io;
use std::ops::Range;
use std::os::unix::fs::FileExt as _;
use std::path::{Path, PathBuf};

/// Rows `start .. start + len` of a file hold one value, whose hash is `hash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct Run {
    pub hash: u32,
    pub start: u32,
    pub len: u32,
}

/// Runs per block: what one lookup reads (3 KiB), and how many runs share one hash in memory.
pub(crate) const BLOCK: usize = 256;
const RUN_BYTES: usize = 12;

/// One data file's runs in a [`RunStore`].
#[derive(Debug)]
pub(crate) struct StoredRuns {
    offset: u64,
    count: usize,
    /// The hash of the first run of each block.
    firsts: Vec<u32>,
}

/// The temporary file that holds the runs of any number of data files, one after another.
/// Space of a file dropped from the index is not reused: the store lives as long as the open
/// destination, which indexes each data file once.
pub(crate) struct RunStore {
    /// Where the file is made (when the first runs are put).
    dir: PathBuf,
    file: Option<std::fs::File>,
    end: u64,
    /// The block read last, and where it starts in the file.
    block: Vec<Run>,
    block_at: Option<u64>,
}

impl Default for RunStore {
    /// A store in the system's temporary directory (`TMPDIR`, else `/tmp`).
    fn default() -> RunStore {
        RunStore::in_dir(std::env::temp_dir())
    }
}

impl RunStore {
    pub(crate) fn in_dir(dir: PathBuf) -> RunStore {
        RunStore {
            dir,
            file: None,
            end: 0,
            block: Vec::new(),
            block_at: None,
        }
    }

    /// The directory the store's file is (or will be) in.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// Sorts `runs` and writes them to the store; `runs` is left empty (its memory freed).
    pub(crate) fn put(&mut self, runs: &mut Vec<Run>) -> io::Result<StoredRuns> {
        runs.sort_unstable();
        let file = match &mut self.file {
            Some(f) => f,
            None => self.file.insert(tempfile::tempfile_in(&self.dir)?),
        };
        let offset = self.end;
        let mut firsts = Vec::with_capacity(runs.len().div_ceil(BLOCK));
        // Written a chunk of blocks at a time: the bytes of a file's runs are never all in
        // memory beside the runs themselves.
        let mut bytes = Vec::with_capacity(64 * BLOCK * RUN_BYTES);
        let mut at = offset;
        for chunk in runs.chunks(64 * BLOCK) {
            bytes.clear();
            for (i, r) in chunk.iter().enumerate() {
                if i % BLOCK == 0 {
                    firsts.push(r.hash);
                }
                bytes.extend_from_slice(&r.hash.to_le_bytes());
                bytes.extend_from_slice(&r.start.to_le_bytes());
                bytes.extend_from_slice(&r.len.to_le_bytes());
            }
            file.write_all_at(&bytes, at)?;
            at += bytes.len() as u64;
        }
        self.end = at;
        let stored = StoredRuns {
            offset,
            count: runs.len(),
            firsts,
        };
        *runs = Vec::new();
        Ok(stored)
    }

    /// Appends to `found` the row ranges of every run of `stored` whose hash is among `hashes`
    /// (sorted), in hash order.
    pub(crate) fn find(
        &mut self,
        stored: &StoredRuns,
        hashes: &[u32],
        found: &mut Vec<Range<usize>>,
    ) -> io::Result<()> {
        let blocks = stored.firsts.len();
        for &h in hashes {
            // Runs of `h` may start in the block before the first whose first hash is `h` or
            // more, and go on for as long as blocks start with `h`.
            let mut b = stored.firsts.partition_point(|&f| f < h).saturating_sub(1);
            while b < blocks && stored.firsts[b] <= h {
                let block = self.block(stored, b)?;
                let first = block.partition_point(|r| r.hash < h);
                for r in block[first..].iter().take_while(|r| r.hash == h) {
                    let start = r.start as usize;
                    found.push(start..start + r.len as usize);
                }
                if block.last().is_some_and(|r| r.hash > h) {
                    break;
                }
                b += 1;
            }
        }
        Ok(())
    }

    /// Block `b` of `stored`, read unless it is the one read last.
    fn block(&mut self, stored: &StoredRuns, b: usize) -> io::Result<&[Run]> {
        let at = stored.offset + (b * BLOCK * RUN_BYTES) as u64;
        if self.block_at != Some(at) {
            let Some(file) = &self.file else {
                return Err(io::Error::other("the group index has no file"));
            };
            let runs = (stored.count - b * BLOCK).min(BLOCK);
            let mut bytes = vec![0u8; runs * RUN_BYTES];
            self.block_at = None;
            file.read_exact_at(&mut bytes, at)?;
            self.block.clear();
            self.block.extend(bytes.chunks_exact(RUN_BYTES).map(|c| {
                let word = |i: usize| u32::from_le_bytes([c[i], c[i + 1], c[i + 2], c[i + 3]]);
                Run {
                    hash: word(0),
                    start: word(4),
                    len: word(8),
                }
            }));
            self.block_at = Some(at);
        }
        Ok(&self.block)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The in-memory answer: every run of a hash among `hashes`, in hash order.
    fn expected(runs: &[Run], hashes: &[u32]) -> Vec<Range<usize>> {
        let mut sorted = runs.to_vec();
        sorted.sort_unstable();
        hashes
            .iter()
            .flat_map(|&h| {
                sorted
                    .iter()
                    .filter(move |r| r.hash == h)
                    .map(|r| r.start as usize..(r.start + r.len) as usize)
            })
            .collect()
    }

    #[test]
    fn lookups_find_what_a_scan_finds_across_block_borders_and_files() {
        // A small generator, so the test needs no dependency and repeats exactly.
        let mut seed = 0x9e37_79b9_u64;
        let mut next = move |n: u32| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % u64::from(n)) as u32
        };
        let mut store = RunStore::default();
        let mut files = Vec::new();
        // Sizes around the block size; few distinct hashes, so one hash's runs span blocks.
        for (count, distinct) in [(0, 1), (1, 1), (255, 40), (256, 3), (257, 300), (5_000, 70)] {
            let runs: Vec<Run> = (0..count)
                .map(|i| Run {
                    hash: next(distinct) * 7,
                    start: i * 3,
                    len: 1 + next(3),
                })
                .collect();
            let mut owned = runs.clone();
            let stored = store.put(&mut owned).expect("put");
            assert!(owned.is_empty() && owned.capacity() == 0);
            assert_eq!(stored.count, count as usize);
            files.push((runs, stored));
        }
        for (runs, stored) in &files {
            for hashes in [
                vec![],
                vec![0],
                vec![7, 14, 21],
                (0..400).map(|h| h * 7).collect(),
                (0..400).collect::<Vec<u32>>(),
                vec![u32::MAX],
            ] {
                let mut found = Vec::new();
                store.find(stored, &hashes, &mut found).expect("find");
                assert_eq!(found, expected(runs, &hashes), "{} runs", runs.len());
            }
        }
    }
}
