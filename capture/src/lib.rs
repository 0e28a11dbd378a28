// SPDX-License-Identifier: Apache-2.0
//! Records what the guest and clients feed ferry's parsers, so that the
//! fuzz targets' seed corpora are real traffic (`fuzz/seeds-from-capture.py`
//! turns the records into seeds).
//!
//! The hooks are called unconditionally and do nothing unless this crate
//! is built with its `record` feature (`cargo build --features capture`
//! in ferry's workspace); a ferry built so records when `FERRY_CAPTURE`
//! names a directory: one file per [`Input`] and process,
//! `<dir>/<input>.<pid>`, opened by [`init`] before any thread is confined
//! (the threads then only `write` to them). A record is its length (u32,
//! little endian) then its bytes; each file stops growing at 4 MiB.
//! Failures to record are ignored: capturing never changes what ferry
//! does.
#![deny(missing_docs)]

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;

use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestMemory};

/// Whether this build records at all.
const RECORDING: bool = cfg!(feature = "record");

/// Most bytes recorded of one descriptor.
const MAX_DESCRIPTOR_BYTES: usize = 64 * 1024;
/// Most bytes recorded of one input by one process: seeds need a sample,
/// and a data path recording every byte it moves slows the guest.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// The kinds of input recorded, a file each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// Bytes read from passt's stream (frames with their length prefix).
    PasstStream,
    /// A chain from virtio-net's TX queue.
    NetTx,
    /// A chain from virtio-net's RX queue (buffers for frames).
    NetRx,
    /// A chain from virtio-blk's queue.
    Block,
    /// A chain from virtio-vsock's TX queue.
    VsockTx,
    /// A chain from virtio-vsock's RX queue.
    VsockRx,
    /// Bytes a hybrid vsock client sent before its CONNECT line was whole.
    ConnectLine,
    /// Bytes read from an API client.
    Api,
}

/// Every input, in declaration order: `INPUTS[input as usize] == input`.
const INPUTS: [Input; 8] = [
    Input::PasstStream,
    Input::NetTx,
    Input::NetRx,
    Input::Block,
    Input::VsockTx,
    Input::VsockRx,
    Input::ConnectLine,
    Input::Api,
];

impl Input {
    /// Its file's name (before the pid).
    pub fn name(self) -> &'static str {
        match self {
            Self::PasstStream => "passt_stream",
            Self::NetTx => "net_tx",
            Self::NetRx => "net_rx",
            Self::Block => "block",
            Self::VsockTx => "vsock_tx",
            Self::VsockRx => "vsock_rx",
            Self::ConnectLine => "connect_line",
            Self::Api => "api",
        }
    }
}

/// The open files, in [`INPUTS`] order, with the bytes recorded in each;
/// none when not capturing.
static FILES: OnceLock<Option<Vec<(File, AtomicU64)>>> = OnceLock::new();

/// Opens the files if `FERRY_CAPTURE` names a directory (created if
/// missing). Called once, before any thread is confined.
pub fn init() {
    if !RECORDING {
        return;
    }
    FILES.get_or_init(|| {
        let dir = std::path::PathBuf::from(std::env::var_os("FERRY_CAPTURE")?);
        std::fs::create_dir_all(&dir).ok()?;
        let pid = std::process::id();
        INPUTS
            .iter()
            .map(|i| {
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(dir.join(format!("{}.{pid}", i.name())))
                    .ok()
                    .map(|f| (f, AtomicU64::new(0)))
            })
            .collect()
    });
}

/// Records `bytes` as one record of `input`. Inlined, so that a build
/// without `record` keeps nothing of it on the data paths that call it.
#[inline]
pub fn bytes(input: Input, bytes: &[u8]) {
    if !RECORDING {
        return;
    }
    let Some(Some(files)) = FILES.get() else {
        return;
    };
    let Some((file, written)) = files.get(input as usize) else {
        return;
    };
    let size = 4 + bytes.len() as u64;
    if written.fetch_add(size, Ordering::Relaxed) + size > MAX_FILE_BYTES {
        return;
    }
    let mut record = Vec::with_capacity(4 + bytes.len());
    record.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    record.extend_from_slice(bytes);
    // One write per record: records of threads writing at once stay whole.
    let _ = (&*file).write_all(&record);
}

/// Records a descriptor chain as the guest laid it out: per descriptor
/// its address (u64), length (u32), flags (u16) and, if the device reads
/// it, the bytes it holds (u32 count, then the bytes; at most 64 KiB).
pub fn chain<M>(input: Input, chain: &DescriptorChain<M>)
where
    M: std::ops::Deref + Clone,
    M::Target: GuestMemory,
{
    if !RECORDING || !matches!(FILES.get(), Some(Some(_))) {
        return;
    }
    let mem = chain.memory();
    let mut record = Vec::new();
    for d in chain.clone() {
        record.extend_from_slice(&d.addr().0.to_le_bytes());
        record.extend_from_slice(&d.len().to_le_bytes());
        record.extend_from_slice(&d.flags().to_le_bytes());
        let mut data = Vec::new();
        if !d.is_write_only() {
            data.resize((d.len() as usize).min(MAX_DESCRIPTOR_BYTES), 0);
            if mem.read_slice(&mut data, d.addr()).is_err() {
                data.clear();
            }
        }
        record.extend_from_slice(&(data.len() as u32).to_le_bytes());
        record.extend_from_slice(&data);
    }
    bytes(input, &record);
}

/// A reader whose reads are recorded as `input`, one record each.
#[derive(Debug)]
pub struct Tee<'r, R>(pub &'r mut R, pub Input);

impl<R: std::io::Read> std::io::Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.0.read(buf)?;
        bytes(self.1, &buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::split::Descriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use virtio_queue::{Queue, QueueT};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

    use super::*;

    #[test]
    fn an_input_indexes_its_file() {
        for (i, input) in INPUTS.iter().enumerate() {
            assert_eq!(*input as usize, i, "{}", input.name());
        }
    }

    /// One test: the files are the process's, opened once.
    #[test]
    fn records_are_length_prefixed_and_chains_keep_the_guests_layout() {
        let dir = std::env::temp_dir().join(format!("ferry-capture-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::env::set_var("FERRY_CAPTURE", &dir);
        init();

        bytes(Input::Api, b"GET / HTTP/1.1\r\n\r\n");
        let mem: GuestMemoryMmap<()> =
            GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 1 << 20)]).expect("memory");
        mem.write_slice(b"head", GuestAddress(0x8000))
            .expect("write");
        let ring = MockSplitQueue::create(&mem, GuestAddress(0x1_0000), 16);
        let mut queue: Queue = ring.create_queue().expect("queue");
        ring.add_desc_chains(
            &[
                RawDescriptor::from(Descriptor::new(0x8000, 4, 1, 1)),
                RawDescriptor::from(Descriptor::new(0x9000, 512, 2, 0)),
            ],
            0,
        )
        .expect("chain");
        let chain_ = queue.pop_descriptor_chain(&mem).expect("a chain");
        chain(Input::Block, &chain_);

        let read = |input: Input| {
            std::fs::read(dir.join(format!("{}.{}", input.name(), std::process::id())))
        };
        if RECORDING {
            let api = read(Input::Api).expect("the API's file");
            assert_eq!(api[..4], 18u32.to_le_bytes());
            assert_eq!(&api[4..], b"GET / HTTP/1.1\r\n\r\n");
            let block = read(Input::Block).expect("the block file");
            let mut want = Vec::new();
            want.extend_from_slice(&(2 * 18 + 4u32).to_le_bytes());
            // The readable descriptor with its bytes; the writable one without.
            want.extend_from_slice(&0x8000u64.to_le_bytes());
            want.extend_from_slice(&4u32.to_le_bytes());
            want.extend_from_slice(&1u16.to_le_bytes());
            want.extend_from_slice(&4u32.to_le_bytes());
            want.extend_from_slice(b"head");
            want.extend_from_slice(&0x9000u64.to_le_bytes());
            want.extend_from_slice(&512u32.to_le_bytes());
            want.extend_from_slice(&2u16.to_le_bytes());
            want.extend_from_slice(&0u32.to_le_bytes());
            assert_eq!(block, want);
            assert_eq!(read(Input::NetTx).expect("an empty file"), b"");
        } else {
            assert!(
                !dir.exists(),
                "a build without `record` wrote {}",
                dir.display()
            );
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
