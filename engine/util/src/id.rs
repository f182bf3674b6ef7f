//! Random identifiers (container, exec, network and volume ids), from the kernel's CSPRNG.

/// `bytes` random bytes as lower-case hex (`random_hex(32)` is a Docker-style 64-digit id).
/// An error when the kernel refuses randomness (a seccomp profile): never zeros.
pub fn random_hex(bytes: usize) -> std::io::Result<String> {
    let mut buf = vec![0u8; bytes];
    let mut filled = 0;
    while filled < buf.len() {
        // SAFETY: getrandom writes at most `len - filled` bytes into the buffer's tail.
        let n = unsafe { libc::getrandom(buf[filled..].as_mut_ptr().cast(), buf.len() - filled, 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        filled += n as usize;
    }
    Ok(buf.iter().map(|b| format!("{b:02x}")).collect())
}

/// A 64-hex-digit id, as Docker's container, exec and network ids.
pub fn new_id() -> std::io::Result<String> {
    random_hex(32)
}

/// Whether `id` is a container id the runtime takes, as runc's rule: 1 to 1024 of
/// `[A-Za-z0-9_+.-]`, not `.` or `..` (it names directories of lifecycled, the shim and the
/// runtime).
pub fn valid_container_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'+' | b'-' | b'.'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn container_ids_as_runc_takes_them() {
        assert!(super::valid_container_id("abc-1.2_3+x"));
        for bad in ["", ".", "..", "../x", "a/b", "a b"] {
            assert!(!super::valid_container_id(bad), "{bad}");
        }
        assert!(!super::valid_container_id(&"a".repeat(1025)));
    }

    #[test]
    fn ids_are_hex_of_the_asked_length_and_differ() {
        let (a, b) = (super::new_id().unwrap(), super::new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(super::random_hex(4).unwrap().len(), 8);
    }
}
