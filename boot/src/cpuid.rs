// SPDX-License-Identifier: Apache-2.0
//! CPUID fix-ups: what KVM supports, with each vCPU's APIC id and the VM's
//! topology (one socket, one thread per core, `count` cores) filled in.

use kvm_bindings::{kvm_cpuid_entry2, CpuId};

/// CPUID.1:ECX bit 31, "running under a hypervisor".
const ECX_HYPERVISOR: u32 = 1 << 31;
/// CPUID.1:EDX bit 28, more than one logical processor per package.
const EDX_HTT: u32 = 1 << 28;
/// Level types of leaves 0xB/0x1F (ECX bits 15:8).
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// Number of bits needed to number `count` items (ceil(log2(count))).
fn id_bits(count: u32) -> u32 {
    if count <= 1 {
        0
    } else {
        32 - (count - 1).leading_zeros()
    }
}

/// Fixes one CPUID entry for vCPU `id` of `count`.
fn fix_entry(entry: &mut kvm_cpuid_entry2, id: u32, count: u32) {
    match entry.function {
        0x1 => {
            // EBX[31:24] initial APIC id, EBX[23:16] logical processors in the package.
            entry.ebx = (entry.ebx & 0xffff) | (id << 24) | ((count & 0xff) << 16);
            entry.ecx |= ECX_HYPERVISOR;
            if count > 1 {
                entry.edx |= EDX_HTT;
            } else {
                entry.edx &= !EDX_HTT;
            }
        }
        0x4 => {
            // EAX[31:26]: cores per package - 1; EAX[25:14]: threads sharing this cache - 1.
            entry.eax &= 0x3fff;
            entry.eax |= (count - 1) << 26;
            let level = (entry.eax >> 5) & 0x7;
            if level >= 3 {
                entry.eax |= (count - 1) << 14;
            }
        }
        0xb | 0x1f => {
            entry.edx = id;
            match entry.index {
                0 => {
                    entry.eax = 0;
                    entry.ebx = 1;
                    entry.ecx = (LEVEL_SMT << 8) | entry.index;
                }
                1 => {
                    entry.eax = id_bits(count);
                    entry.ebx = count;
                    entry.ecx = (LEVEL_CORE << 8) | entry.index;
                }
                _ => {
                    entry.eax = 0;
                    entry.ebx = 0;
                    entry.ecx = entry.index;
                }
            }
        }
        0x8000_0008 => {
            // ECX[15:12] APIC id size, ECX[7:0] cores - 1.
            entry.ecx = (entry.ecx & !0xf0ff) | (id_bits(count) << 12) | (count - 1);
        }
        0x8000_001e => {
            // Extended APIC id, compute unit id with one thread each, node 0.
            entry.eax = id;
            entry.ebx = id & 0xff;
            entry.ecx = 0;
        }
        _ => {}
    }
}

/// Fixes `cpuid` (from KVM_GET_SUPPORTED_CPUID) for vCPU `id` of `count`.
pub fn fix_cpuid(cpuid: &mut CpuId, id: u32, count: u32) {
    for entry in cpuid.as_mut_slice() {
        fix_entry(entry, id, count.max(1));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ebx: 0x0000_0800,
            edx: EDX_HTT,
            ..Default::default()
        }
    }

    #[test]
    fn leaf1_carries_apic_id_and_count() {
        let mut e = entry(1, 0);
        fix_entry(&mut e, 3, 4);
        assert_eq!(e.ebx >> 24, 3);
        assert_eq!((e.ebx >> 16) & 0xff, 4);
        assert_eq!(e.ebx & 0xffff, 0x0800);
        assert_ne!(e.ecx & ECX_HYPERVISOR, 0);
        assert_ne!(e.edx & EDX_HTT, 0);
        let mut single = entry(1, 0);
        fix_entry(&mut single, 0, 1);
        assert_eq!(single.edx & EDX_HTT, 0);
    }

    #[test]
    fn extended_topology_levels() {
        let mut smt = entry(0xb, 0);
        let mut core = entry(0xb, 1);
        let mut end = entry(0xb, 2);
        for e in [&mut smt, &mut core, &mut end] {
            fix_entry(e, 2, 3);
            assert_eq!(e.edx, 2);
        }
        assert_eq!((smt.eax, smt.ebx, smt.ecx), (0, 1, 0x100));
        assert_eq!((core.eax, core.ebx, core.ecx), (2, 3, 0x201));
        assert_eq!((end.eax, end.ebx, end.ecx), (0, 0, 2));
    }

    #[test]
    fn id_bits_rounds_up() {
        assert_eq!(
            [id_bits(1), id_bits(2), id_bits(3), id_bits(4), id_bits(5)],
            [0, 1, 2, 2, 3]
        );
    }
}
