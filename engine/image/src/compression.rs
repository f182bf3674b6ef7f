//! Layer and archive compression: detected from the leading bytes, never from a file name.

use std::io::{self, BufRead, BufReader, Read};

#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    Gzip,
    Zstd,
}

impl Compression {
    /// The OCI layer media type for a tar with this compression.
    pub fn oci_layer_media_type(self) -> &'static str {
        match self {
            Compression::None => crate::manifest::MEDIA_OCI_LAYER,
            Compression::Gzip => crate::manifest::MEDIA_OCI_LAYER_GZIP,
            Compression::Zstd => crate::manifest::MEDIA_OCI_LAYER_ZSTD,
        }
    }
}

/// Looks at the first bytes of `r` without consuming them.
pub fn detect<R: BufRead>(r: &mut R) -> io::Result<Compression> {
    let head = r.fill_buf()?;
    Ok(if head.starts_with(&[0x1f, 0x8b]) {
        Compression::Gzip
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Compression::Zstd
    } else if head.starts_with(b"BZh") || head.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "bzip2 and xz compression are not supported (use gzip, zstd or none)",
        ));
    } else {
        Compression::None
    })
}

/// Wraps `r` in the decompressor its leading bytes call for.
pub fn decompress<'a, R: Read + 'a>(r: R) -> io::Result<(Compression, Box<dyn Read + 'a>)> {
    let mut r = BufReader::with_capacity(128 * 1024, r);
    let c = detect(&mut r)?;
    let out: Box<dyn Read + 'a> = match c {
        Compression::None => Box::new(r),
        Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(r)),
        Compression::Zstd => Box::new(zstd::stream::read::Decoder::with_buffer(r)?),
    };
    Ok((c, out))
}
