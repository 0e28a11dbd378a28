// SPDX-License-Identifier: Apache-2.0
//! A virtio device for the transports' tests: two queues of 16, features
//! VERSION_1 and bit 5, a configuration space whose every byte is its
//! offset and whose generation the test sets; it records each
//! activation's features and counts its resets.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use super::features::{self, VIRTIO_F_VERSION_1};
use super::net::VIRTIO_ID_NET;
use super::{ActivateError, Activation, VirtioDevice};

/// The test device.
#[derive(Default)]
pub struct Probe {
    /// Features of each activation.
    pub activations: Arc<Mutex<Vec<u64>>>,
    /// Resets after activation.
    pub resets: Arc<Mutex<usize>>,
    /// The configuration generation.
    pub generation: Arc<AtomicU32>,
}

/// Features of each activation, and the number of resets.
pub type Record = (Arc<Mutex<Vec<u64>>>, Arc<Mutex<usize>>);

impl VirtioDevice for Probe {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_NET
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[16, 16]
    }
    fn features(&self) -> u64 {
        features::set(&[VIRTIO_F_VERSION_1, 5])
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(offset as u8);
    }
    fn config_generation(&self) -> u32 {
        self.generation.load(Ordering::SeqCst)
    }
    fn activate(&mut self, a: Activation) -> Result<(), ActivateError> {
        assert_eq!(a.queues.len(), 2);
        self.activations.lock().unwrap().push(a.features);
        Ok(())
    }
    fn reset(&mut self) {
        *self.resets.lock().unwrap() += 1;
    }
}
