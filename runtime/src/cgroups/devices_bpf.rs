//! Device rules on cgroup v2: v2 has no devices controller, so the rules become a small
//! BPF_PROG_TYPE_CGROUP_DEVICE program attached to the container's cgroup (as runc and crun do).
//!
//! The rules are applied in order to an "allow everything" start, so the last rule that matches
//! a device decides. The program checks them from the last to the first and returns at the first
//! match; if none matches, the device is allowed. The default devices every container may use
//! come last, so nothing denies them.

use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use oci_spec::runtime::{LinuxDeviceCgroup, LinuxDeviceType};

use super::{CgroupError, Result};

/// One rule in kernel terms: type (0 any, 1 block, 2 char), major/minor (None = any), access
/// bits (1 mknod, 2 read, 4 write), allow.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRule {
    pub typ: u32,
    pub major: Option<u32>,
    pub minor: Option<u32>,
    pub access: u32,
    pub allow: bool,
}

impl DeviceRule {
    pub fn from_spec(d: &LinuxDeviceCgroup) -> DeviceRule {
        let typ = match d.typ() {
            Some(LinuxDeviceType::B) => 1,
            Some(LinuxDeviceType::C) | Some(LinuxDeviceType::U) => 2,
            // fifos need no permission from the device cgroup
            Some(LinuxDeviceType::P) | Some(LinuxDeviceType::A) | None => 0,
        };
        let access = d.access().as_deref().unwrap_or("rwm").chars().fold(0, |acc, c| {
            acc | match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            }
        });
        let num = |n: Option<i64>| n.filter(|&n| n >= 0).map(|n| n as u32);
        DeviceRule { typ, major: num(d.major()), minor: num(d.minor()), access, allow: d.allow() }
    }

    /// Parses the v1 form "c 1:3 rwm" (used for the default devices).
    pub fn parse_v1(s: &str, allow: bool) -> Option<DeviceRule> {
        let mut parts = s.split_whitespace();
        let typ = match parts.next()? {
            "a" => 0,
            "b" => 1,
            "c" => 2,
            _ => return None,
        };
        let (major, minor) = parts.next()?.split_once(':')?;
        let num = |n: &str| if n == "*" { Some(None) } else { n.parse().ok().map(Some) };
        let access = parts.next()?.chars().fold(0, |acc, c| {
            acc | match c {
                'm' => 1,
                'r' => 2,
                'w' => 4,
                _ => 0,
            }
        });
        Some(DeviceRule { typ, major: num(major)?, minor: num(minor)?, access, allow })
    }
}

// BPF instruction encoding
const LDX_MEM_W: u8 = 0x61;
const ALU64_AND_K: u8 = 0x57;
const ALU64_RSH_K: u8 = 0x77;
const ALU64_MOV_K: u8 = 0xb7;
const ALU64_MOV_X: u8 = 0xbf;
const JMP_JNE_K: u8 = 0x55;
const JMP_EXIT: u8 = 0x95;

fn insn(code: u8, dst: u8, src: u8, off: i16, imm: i32) -> u64 {
    let mut b = [0u8; 8];
    b[0] = code;
    b[1] = (src << 4) | (dst & 0x0f);
    b[2..4].copy_from_slice(&off.to_le_bytes());
    b[4..8].copy_from_slice(&imm.to_le_bytes());
    u64::from_le_bytes(b)
}

/// The program's instructions (the verifier refuses unreachable ones, so a rule that matches
/// everything ends the program). Registers: r2 type, r3 access, r4 major, r5 minor (from
/// `struct bpf_cgroup_dev_ctx { u32 access_type; u32 major; u32 minor; }`).
pub fn program(rules: &[DeviceRule]) -> Vec<u64> {
    let mut p = vec![
        insn(LDX_MEM_W, 2, 1, 0, 0),
        insn(ALU64_AND_K, 2, 0, 0, 0xffff),
        insn(LDX_MEM_W, 3, 1, 0, 0),
        insn(ALU64_RSH_K, 3, 0, 0, 16),
        insn(LDX_MEM_W, 4, 1, 4, 0),
        insn(LDX_MEM_W, 5, 1, 8, 0),
    ];
    for r in rules.iter().rev() {
        // the checks of one rule; each jumps past the rest of the block when it does not match
        let mut checks: Vec<(u8, u8, i32)> = Vec::new(); // (code kind, reg, imm); kind 0 = jne, 1 = access
        if r.typ != 0 {
            checks.push((0, 2, r.typ as i32));
        }
        if r.access & 7 != 7 {
            checks.push((1, 3, (!r.access & 7) as i32));
        }
        if let Some(m) = r.major {
            checks.push((0, 4, m as i32));
        }
        if let Some(m) = r.minor {
            checks.push((0, 5, m as i32));
        }
        if checks.is_empty() {
            // matches every device: it decides, and nothing after it could run
            p.push(insn(ALU64_MOV_K, 0, 0, 0, r.allow as i32));
            p.push(insn(JMP_EXIT, 0, 0, 0, 0));
            return p;
        }
        let mut block = Vec::new();
        for (kind, reg, imm) in checks {
            if kind == 0 {
                block.push((insn(JMP_JNE_K, reg, 0, 0, imm), true));
            } else {
                // asked-for access must be within the rule's: (access & ~rule) == 0
                block.push((insn(ALU64_MOV_X, 6, reg, 0, 0), false));
                block.push((insn(ALU64_AND_K, 6, 0, 0, imm), false));
                block.push((insn(JMP_JNE_K, 6, 0, 0, 0), true));
            }
        }
        block.push((insn(ALU64_MOV_K, 0, 0, 0, r.allow as i32), false));
        block.push((insn(JMP_EXIT, 0, 0, 0, 0), false));
        let len = block.len();
        for (i, (ins, is_jump)) in block.into_iter().enumerate() {
            if is_jump {
                // jump to the first instruction after this block
                let off = (len - i - 1) as i16;
                let mut b = ins.to_le_bytes();
                b[2..4].copy_from_slice(&off.to_le_bytes());
                p.push(u64::from_le_bytes(b));
            } else {
                p.push(ins);
            }
        }
    }
    p.push(insn(ALU64_MOV_K, 0, 0, 0, 1));
    p.push(insn(JMP_EXIT, 0, 0, 0, 0));
    p
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_ATTACH: libc::c_long = 8;
const BPF_PROG_TYPE_CGROUP_DEVICE: u32 = 15;
const BPF_CGROUP_DEVICE: u32 = 6;
const BPF_F_ALLOW_MULTI: u32 = 2;

#[repr(C)]
#[derive(Default)]
struct ProgLoadAttr {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
    prog_ifindex: u32,
    expected_attach_type: u32,
}

#[repr(C)]
#[derive(Default)]
struct ProgAttachAttr {
    target_fd: u32,
    attach_bpf_fd: u32,
    attach_type: u32,
    attach_flags: u32,
    replace_bpf_fd: u32,
}

/// Loads the program for `rules` and attaches it to the cgroup directory `cgroup`. The cgroup
/// keeps the program alive; it goes with the cgroup.
pub fn attach(cgroup: BorrowedFd<'_>, rules: &[DeviceRule]) -> Result<()> {
    let insns = program(rules);
    // without the verifier's log first (it is slow to write); with it only to explain a failure
    let fd = match load(&insns, None) {
        Ok(fd) => fd,
        Err(errno) => {
            let mut log = vec![0u8; 64 * 1024];
            let _ = load(&insns, Some(&mut log));
            let log = String::from_utf8_lossy(&log[..log.iter().position(|&b| b == 0).unwrap_or(0)]).into_owned();
            return Err(CgroupError::Invalid(format!(
                "load the device filter program: {errno}: {}",
                log.lines().next().unwrap_or("")
            )));
        }
    };
    let prog = fd;
    let att = ProgAttachAttr {
        target_fd: cgroup.as_raw_fd() as u32,
        attach_bpf_fd: prog.as_raw_fd() as u32,
        attach_type: BPF_CGROUP_DEVICE,
        attach_flags: BPF_F_ALLOW_MULTI,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `att` of the size given.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_ATTACH,
            &att as *const ProgAttachAttr,
            std::mem::size_of::<ProgAttachAttr>(),
        )
    };
    if r < 0 {
        return Err(CgroupError::Invalid(format!("attach the device filter program: {}", nix::Error::last())));
    }
    Ok(())
}

fn load(insns: &[u64], log: Option<&mut Vec<u8>>) -> std::result::Result<OwnedFd, nix::Error> {
    let license = c"Apache";
    let mut name = [0u8; 16];
    name[..13].copy_from_slice(b"engine_device");
    let (log_level, log_size, log_buf) = match log {
        Some(buf) => (1, buf.len() as u32, buf.as_mut_ptr() as u64),
        None => (0, 0, 0),
    };
    let attr = ProgLoadAttr {
        prog_type: BPF_PROG_TYPE_CGROUP_DEVICE,
        insn_cnt: insns.len() as u32,
        insns: insns.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level,
        log_size,
        log_buf,
        prog_name: name,
        expected_attach_type: BPF_CGROUP_DEVICE,
        ..Default::default()
    };
    // SAFETY: bpf(2) reads `attr` (of the size given) and the instruction, license and log
    // buffers it points to, all alive for the call.
    let fd = unsafe {
        libc::syscall(libc::SYS_bpf, BPF_PROG_LOAD, &attr as *const ProgLoadAttr, std::mem::size_of::<ProgLoadAttr>())
    };
    if fd < 0 {
        return Err(nix::Error::last());
    }
    // SAFETY: the kernel returned a new descriptor for the program; we own it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// The rules of `linux.resources.devices` followed by the default devices.
pub fn rules_for(spec_rules: &[LinuxDeviceCgroup]) -> Vec<DeviceRule> {
    let mut rules: Vec<DeviceRule> = spec_rules.iter().map(DeviceRule::from_spec).collect();
    rules.extend(super::v1::DEFAULT_ALLOWED_DEVICES.iter().filter_map(|r| DeviceRule::parse_v1(r, true)));
    rules
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_rules() {
        assert_eq!(
            DeviceRule::parse_v1("c 136:* rw", true),
            Some(DeviceRule { typ: 2, major: Some(136), minor: None, access: 6, allow: true })
        );
        assert_eq!(
            DeviceRule::parse_v1("a *:* m", false),
            Some(DeviceRule { typ: 0, major: None, minor: None, access: 1, allow: false })
        );
    }

    #[test]
    fn jumps_land_on_the_next_block() {
        let rules = [DeviceRule { typ: 2, major: Some(1), minor: Some(3), access: 6, allow: true }];
        let p = program(&rules);
        // 6 loads, then: jne type, mov, and, jne access, jne major, jne minor, mov r0, exit; then the default
        assert_eq!(p.len(), 6 + 8 + 2);
        let off = |i: usize| i16::from_le_bytes(p[i].to_le_bytes()[2..4].try_into().unwrap());
        assert_eq!(off(6), 7); // jne type -> past the 7 following instructions
        assert_eq!(off(9), 4);
        assert_eq!(off(10), 3);
        assert_eq!(off(11), 2);
    }
}
