// SPDX-License-Identifier: Apache-2.0
//! Taking the chains the driver made available on a queue: the drain
//! loop, the "recheck once" rule for a ring that runs empty, and telling
//! the guest about the chains used.
//!
//! A device turns the driver's notifications off while it drains and back
//! on when the ring runs empty; the driver may have made chains available
//! in between, so turning them on says whether to look again. It says so
//! a second time in a row, with nothing to pop meanwhile, only if the
//! driver broke the ring's index: the device then stops rather than spin.

use std::fmt::Display;

use virtio_queue::{DescriptorChain, Queue, QueueT};

use super::Interrupt;
use crate::GuestMemory;

/// The "recheck once" rule for one pass over a ring: when the ring runs
/// empty, turn notifications back on and look again once if more came.
#[derive(Debug, Default)]
pub struct RecheckOnce {
    rechecked: bool,
}

impl RecheckOnce {
    /// A chain was popped: "more available" is news again, not a broken index.
    #[inline]
    pub fn made_progress(&mut self) {
        self.rechecked = false;
    }

    /// `queue` gave no chain: turns its notifications back on and says
    /// whether to look again (chains came meanwhile, and this is the first
    /// time since the last chain). A broken index or a ring that cannot be
    /// written is logged as `owner`'s `ring` ring, and ends the pass.
    pub fn look_again(
        &mut self,
        queue: &mut Queue,
        mem: &GuestMemory,
        owner: &dyn Display,
        ring: &str,
    ) -> bool {
        match queue.enable_notification(mem) {
            Ok(false) => false,
            Ok(true) if !self.rechecked => {
                self.rechecked = true;
                true
            }
            Ok(true) => {
                log::warn!("{owner}: the {ring} ring's index is out of range; ignoring it");
                false
            }
            Err(e) => {
                log::warn!("{owner}: {ring} queue: {e}");
                false
            }
        }
    }
}

/// Runs `use_chain` on every chain available on `queue` until the ring
/// stays empty (see [`RecheckOnce`]), putting each chain on the used ring
/// with the length `use_chain` returns (the bytes it wrote). Returns
/// whether any chain was used; the caller then tells the guest with
/// [`signal_used`]. `owner` and `ring` name the queue in logs.
pub fn drain<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemory,
    owner: &dyn Display,
    ring: &str,
    mut use_chain: impl FnMut(DescriptorChain<&'m GuestMemory>) -> u32,
) -> bool {
    let mut used_any = false;
    let mut recheck = RecheckOnce::default();
    loop {
        let _ = queue.disable_notification(mem);
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = use_chain(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                log::warn!("{owner}: {ring} used ring: {e}");
            }
            used_any = true;
            recheck.made_progress();
        }
        if !recheck.look_again(queue, mem, owner, ring) {
            return used_any;
        }
    }
}

/// Interrupts the guest for the chains used on `queue` (number `index`),
/// unless the driver asked not to be (with EVENT_IDX, by ring index); if
/// the ring cannot tell, it is interrupted.
pub fn signal_used(
    queue: &mut Queue,
    mem: &GuestMemory,
    interrupt: &Interrupt,
    index: usize,
    owner: &dyn Display,
) {
    match queue.needs_notification(mem) {
        Ok(true) => interrupt.signal_used_queue(index),
        Ok(false) => {}
        Err(e) => {
            log::debug!("{owner}: {e}");
            interrupt.signal_used_queue(index);
        }
    }
}

#[cfg(test)]
mod tests {
    use virtio_queue::desc::split::Descriptor as SplitDescriptor;
    use virtio_queue::desc::RawDescriptor;
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    use super::*;

    const RING: GuestAddress = GuestAddress(0x1_0000);

    fn memory() -> GuestMemory {
        GuestMemory::from_ranges(&[(GuestAddress(0), 1 << 20)]).unwrap()
    }

    fn desc(addr: u64) -> RawDescriptor {
        RawDescriptor::from(SplitDescriptor::new(addr, 16, 0, 0))
    }

    /// The used ring's index and the length of its entry `slot`.
    fn used(mem: &GuestMemory, ring: &MockSplitQueue<GuestMemory>, slot: u64) -> (u16, u32) {
        let used = ring.used_addr().0;
        let idx = mem.read_obj(GuestAddress(used + 2)).unwrap();
        let len = mem.read_obj(GuestAddress(used + 4 + 8 * slot + 4)).unwrap();
        (idx, len)
    }

    #[test]
    fn every_available_chain_is_used_with_the_length_it_was_given() {
        let mem = memory();
        let ring = MockSplitQueue::create(&mem, RING, 16);
        let mut queue: Queue = ring.create_queue().unwrap();
        ring.add_desc_chains(&[desc(0x8_0000), desc(0x9_0000), desc(0xa_0000)], 0)
            .unwrap();
        let mut seen = Vec::new();
        let used_any = drain(&mut queue, &mem, &"test", "test", |chain| {
            seen.push(chain.head_index());
            100 + u32::from(chain.head_index())
        });
        assert!(used_any);
        assert_eq!(seen, [0, 1, 2]);
        assert_eq!(used(&mem, &ring, 2), (3, 102));
        // Nothing more: nothing used, and the pass ends.
        assert!(!drain(&mut queue, &mem, &"test", "test", |_| 0));
    }

    #[test]
    fn a_broken_ring_index_ends_the_pass_instead_of_spinning() {
        let mem = memory();
        let ring = MockSplitQueue::create(&mem, RING, 16);
        let mut queue: Queue = ring.create_queue().unwrap();
        // More "available" than the ring holds: nothing can be popped.
        ring.avail().idx().store(100);
        let mut calls = 0;
        assert!(!drain(&mut queue, &mem, &"test", "test", |_| {
            calls += 1;
            0
        }));
        assert_eq!(calls, 0);

        let mut recheck = RecheckOnce::default();
        assert!(
            recheck.look_again(&mut queue, &mem, &"test", "test"),
            "once"
        );
        assert!(!recheck.look_again(&mut queue, &mem, &"test", "test"));
        recheck.made_progress();
        assert!(recheck.look_again(&mut queue, &mem, &"test", "test"));
    }
}
