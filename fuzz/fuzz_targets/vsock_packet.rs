// SPDX-License-Identifier: Apache-2.0
//! virtio-vsock packets: every chain the guest's ring offers read as a TX
//! packet by `read_tx_chain`, then taken as an RX buffer (`RxBuffer`)
//! and a packet written into it.
//!
//! Input: see `ferry_fuzz` (queue and memory). Params: the guest's CID is
//! `max(3, u32 LE)`.
//!
//! Checked against a plain reading of the chain's readable bytes: a
//! packet read has the header those bytes give, passes the guest checks
//! (source CID, host destination, STREAM, a known op, the data length)
//! and carries exactly its data; a packet refused names the right reason;
//! memory is refused exactly when a descriptor lies outside it. The packet
//! written into an RX buffer lands in its writable descriptors in order,
//! and nothing else in memory changes.

#![no_main]

use ferry_devices::virtio::vsock::packet::{
    read_tx_chain, Header, Op, PacketError, RxBuffer, HDR_LEN, HOST_CID, MAX_PKT_LEN, TYPE_STREAM,
};
use ferry_fuzz::{descriptors, for_each_chain, Guest, Shadow, MAX_QUEUE_SIZE};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let guest = Guest::new(data);
    let guest_cid = u64::from(u32::from_le_bytes(guest.config.params)).max(3);
    let mut queue = guest.queue();
    let mut payload = Vec::new();
    for_each_chain(
        &guest.mem,
        &mut queue,
        2 * usize::from(MAX_QUEUE_SIZE),
        |chain| {
            let descs = descriptors(&chain);
            // The readable bytes, if every readable descriptor lies in memory.
            let mut readable = Some(Vec::new());
            for d in descs.iter().filter(|d| !d.is_write_only()) {
                if d.len() == 0 {
                    continue;
                }
                match (readable.as_mut(), guest.read(d.addr().0, d.len() as usize)) {
                    (Some(bytes), Some(more)) => bytes.extend(more),
                    _ => readable = None,
                }
            }
            let writable: Option<Vec<(u64, usize)>> = descs
                .iter()
                .filter(|d| d.is_write_only() && d.len() > 0)
                .map(|d| {
                    guest
                        .in_one_region(d.addr().0, u64::from(d.len()))
                        .then_some((d.addr().0, d.len() as usize))
                })
                .collect();

            // TX: the guest's packet.
            match (
                read_tx_chain(&guest.mem, chain.clone(), guest_cid, &mut payload),
                &readable,
            ) {
                (Err(PacketError::Memory(_)), None) => {}
                (_, None) => panic!("a chain outside memory was read"),
                (Err(PacketError::Memory(e)), Some(_)) => panic!("a chain in memory refused: {e}"),
                (Err(PacketError::ShortHeader(total)), Some(bytes)) => {
                    assert_eq!(total, bytes.len());
                    assert!(total < HDR_LEN);
                }
                (Err(e), Some(bytes)) => {
                    assert!(bytes.len() >= HDR_LEN);
                    let header = Header::from_bytes(bytes[..HDR_LEN].try_into().expect("a header"));
                    assert_eq!(
                        header.check_from_guest(guest_cid, bytes.len() - HDR_LEN),
                        Err(e)
                    );
                }
                (Ok((header, op)), Some(bytes)) => {
                    assert!(bytes.len() >= HDR_LEN);
                    let raw: &[u8; HDR_LEN] = bytes[..HDR_LEN].try_into().expect("a header");
                    assert_eq!(header, Header::from_bytes(raw));
                    assert_eq!(&header.to_bytes(), raw, "the header does not round trip");
                    assert_eq!(Some(op), Op::from_u16(header.op));
                    assert_eq!(op.to_u16(), header.op);
                    assert_eq!(header.src_cid, guest_cid);
                    assert_eq!(header.dst_cid, HOST_CID);
                    assert_eq!(header.type_, TYPE_STREAM);
                    if op == Op::Rw {
                        assert!(header.len <= MAX_PKT_LEN);
                        let end = HDR_LEN + header.len as usize;
                        assert_eq!(payload.as_slice(), &bytes[HDR_LEN..end]);
                    } else {
                        assert!(payload.is_empty());
                    }
                }
            }

            // RX: the same chain as a buffer for a packet to the guest.
            let mut shadow = Shadow(guest.snapshot());
            let room: usize = writable.as_ref().map_or(0, |w| w.iter().map(|s| s.1).sum());
            match (RxBuffer::new(&guest.mem, chain), &writable) {
                (Ok(buf), Some(segments)) => {
                    assert!(room >= HDR_LEN);
                    assert_eq!(buf.data_room(), room - HDR_LEN);
                    let header = Header {
                        src_cid: HOST_CID,
                        dst_cid: guest_cid,
                        src_port: 1024,
                        dst_port: u32::from(guest.config.next_avail),
                        len: 0xdead_beef,
                        type_: TYPE_STREAM,
                        op: Op::Rw.to_u16(),
                        flags: 0,
                        buf_alloc: 256 * 1024,
                        fwd_cnt: 7,
                    };
                    let n = payload.len().min(buf.data_room());
                    let body = payload[..n].to_vec();
                    let written = buf.write(&header, &body);
                    assert_eq!(written as usize, HDR_LEN + n);
                    let mut packet = Header {
                        len: n as u32,
                        ..header
                    }
                    .to_bytes()
                    .to_vec();
                    packet.extend_from_slice(&body);
                    assert_eq!(shadow.write_segments(segments, &packet), packet.len());
                    shadow.assert_matches(&guest.snapshot(), None, "vsock RX packet");
                    written
                }
                (Err(PacketError::ShortHeader(n)), Some(_)) => {
                    assert_eq!(n, room);
                    assert!(n < HDR_LEN);
                    0
                }
                (Err(PacketError::Memory(_)), None) => 0,
                (got, want) => panic!("RxBuffer::new: {got:?}, writable segments {want:?}"),
            }
        },
    );
});
