// SPDX-License-Identifier: Apache-2.0
//! A scratch directory for a test's images and logs.

use std::path::PathBuf;

use crate::common::guest_file;

/// A scratch directory for images and logs, removed on drop.
#[derive(Debug)]
pub struct Scratch(PathBuf);

impl Scratch {
    /// An empty directory named after `what`.
    pub fn new(what: &str) -> Result<Self, String> {
        let dir = std::env::temp_dir().join(format!("ferry-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {dir:?}: {e}"))?;
        Ok(Self(dir))
    }

    /// The path of `name` in the directory.
    pub fn path(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }

    /// A fresh copy of the test guest's root disk.
    pub fn root_disk(&self) -> Result<PathBuf, String> {
        let path = self.path("root.img");
        std::fs::copy(guest_file("rootfs.ext4")?, &path)
            .map_err(|e| format!("cannot copy the root disk: {e}"))?;
        Ok(path)
    }

    /// A raw image of `len` bytes of a pattern that depends on `seed`.
    pub fn raw_disk(&self, name: &str, len: usize, seed: u8) -> Result<PathBuf, String> {
        let path = self.path(name);
        let bytes: Vec<u8> = (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        std::fs::write(&path, bytes).map_err(|e| format!("cannot write {path:?}: {e}"))?;
        Ok(path)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
