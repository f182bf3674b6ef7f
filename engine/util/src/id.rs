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

#[cfg(test)]
mod tests {
    #[test]
    fn ids_are_hex_of_the_asked_length_and_differ() {
        let (a, b) = (super::new_id().unwrap(), super::new_id().unwrap());
        assert_eq!(a.len(), 64);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        assert_ne!(a, b);
        assert_eq!(super::random_hex(4).unwrap().len(), 8);
    }
}
