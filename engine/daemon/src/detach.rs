//! Docker's detach keys: a sequence a client types on an attached terminal (default ctrl-p
//! ctrl-q) that ends the attach and leaves the container running. The sequence is held back
//! while it is being typed and never reaches the container; a key that breaks it sends what was
//! held.
//!
//! Owns: parsing the `detachKeys` form and watching a stdin stream for it. It never touches
//! the stream's destination.

use crate::http::ApiError;

/// Docker's default: ctrl-p, ctrl-q.
pub const DEFAULT: &[u8] = &[0x10, 0x11];

/// The bytes of a `detachKeys` value (`ctrl-p,ctrl-q`, `a,ctrl-@`); empty: the default.
pub fn parse(keys: &str) -> Result<Vec<u8>, ApiError> {
    if keys.is_empty() {
        return Ok(DEFAULT.to_vec());
    }
    let invalid = || ApiError::bad_request(format!("Invalid detach keys ({keys}) provided"));
    keys.split(',')
        .map(|k| match k.strip_prefix("ctrl-") {
            Some(c) if c.len() == 1 => {
                let c = c.as_bytes()[0].to_ascii_lowercase();
                match c {
                    b'a'..=b'z' => Ok(c - b'a' + 1),
                    b'@' => Ok(0),
                    b'[' => Ok(27),
                    b'\\' => Ok(28),
                    b']' => Ok(29),
                    b'^' => Ok(30),
                    b'_' => Ok(31),
                    _ => Err(invalid()),
                }
            }
            None if k.len() == 1 => Ok(k.as_bytes()[0]),
            _ => Err(invalid()),
        })
        .collect()
}

/// Watches a stdin stream for the detach sequence.
#[derive(Debug)]
pub struct Escape {
    keys: Vec<u8>,
    /// How much of the sequence the last bytes typed.
    matched: usize,
}

/// What a chunk of stdin comes to.
#[derive(Debug, PartialEq, Eq)]
pub enum Fed {
    /// Bytes for the container (maybe none: part of the sequence is held).
    Forward(Vec<u8>),
    /// The sequence was typed: the bytes before it go to the container, then the attach ends.
    Detach(Vec<u8>),
}

impl Escape {
    pub fn new(keys: Vec<u8>) -> Escape {
        Escape { keys, matched: 0 }
    }

    pub fn feed(&mut self, input: &[u8]) -> Fed {
        let mut out = Vec::with_capacity(input.len());
        for &b in input {
            if self.keys.is_empty() {
                out.push(b);
                continue;
            }
            if b == self.keys[self.matched] {
                self.matched += 1;
                if self.matched == self.keys.len() {
                    self.matched = 0;
                    return Fed::Detach(out);
                }
                continue;
            }
            // the sequence is broken: what was held goes, and this key may start it again
            out.extend_from_slice(&self.keys[..self.matched]);
            self.matched = 0;
            if b == self.keys[0] {
                self.matched = 1;
                if self.keys.len() == 1 {
                    self.matched = 0;
                    return Fed::Detach(out);
                }
            } else {
                out.push(b);
            }
        }
        Fed::Forward(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_parse_as_dockers() {
        assert_eq!(parse("").unwrap(), DEFAULT);
        assert_eq!(parse("ctrl-p,ctrl-q").unwrap(), [16, 17]);
        assert_eq!(parse("ctrl-x").unwrap(), [24]);
        assert_eq!(parse("a,ctrl-@,ctrl-_").unwrap(), [b'a', 0, 31]);
        assert!(parse("ctrl-").unwrap_err().message.contains("Invalid detach keys"));
        assert!(parse("ab").is_err() && parse("ctrl-1").is_err());
    }

    #[test]
    fn the_sequence_is_held_and_ends_the_attach() {
        let mut e = Escape::new(DEFAULT.to_vec());
        assert_eq!(e.feed(b"ab\x10"), Fed::Forward(b"ab".to_vec()), "a started sequence is held");
        assert_eq!(e.feed(b"c"), Fed::Forward(b"\x10c".to_vec()), "a broken one sends what was held");
        assert_eq!(e.feed(b"\x10\x10"), Fed::Forward(b"\x10".to_vec()), "a repeated first key starts it again");
        assert_eq!(e.feed(b"\x11rest"), Fed::Detach(Vec::new()));
        let mut one = Escape::new(vec![24]);
        assert_eq!(one.feed(b"xy\x18z"), Fed::Detach(b"xy".to_vec()));
    }
}
