//! SPDY/3.1 (draft-mbelshe-httpbis-spdy-00 with 3.1's session flow control left out, as
//! Kubernetes' `spdystream` does) as the server side of one connection: frames, the zlib header
//! blocks with the protocol's preset dictionary, and a [`Session`] that replies to each stream
//! the client opens and hands it out with its data as a channel.
//!
//! What Kubernetes' clients (kubectl, client-go, crictl, critest) use is all there is: streams
//! opened by the client (SYN_STREAM, answered by SYN_REPLY), data both ways with FIN, resets,
//! pings (echoed) and GOAWAY. SETTINGS and WINDOW_UPDATE are read and ignored (spdystream sends
//! neither and honours neither). The server never opens streams.

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

/// The preset dictionary of SPDY/3's header compression (section 2.6.10.1 of the draft).
const DICTIONARY: &[u8] = include_bytes!("spdy3.dict");

const VERSION: u16 = 3;
const SYN_STREAM: u16 = 1;
const SYN_REPLY: u16 = 2;
const RST_STREAM: u16 = 3;
const PING: u16 = 6;
const GOAWAY: u16 = 7;
const HEADERS: u16 = 8;
const FLAG_FIN: u8 = 0x01;

/// RST_STREAM's status for a stream refused or abandoned by the server.
pub const CANCEL: u32 = 5;
const PROTOCOL_ERROR: u32 = 1;

/// A decompressed header block can be no larger (a bound against zlib bombs).
const MAX_HEADER_BLOCK: usize = 256 * 1024;
/// The largest data frame this side sends.
const MAX_DATA: usize = 32 * 1024;
/// Data frames of one stream waiting for its reader.
const STREAM_BUFFER: usize = 64;

/// A stream's or a reply's headers, names lower-case, in their order on the wire.
pub type Headers = Vec<(String, String)>;

/// The first value of header `name` in `headers`.
pub fn header<'a>(headers: &'a Headers, name: &str) -> Option<&'a str> {
    headers.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str())
}

#[derive(Debug, thiserror::Error)]
pub enum SpdyError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("SPDY protocol error: {0}")]
    Protocol(String),
}

fn protocol(m: impl Into<String>) -> SpdyError {
    SpdyError::Protocol(m.into())
}

/// One frame, as read or to be written.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    SynStream {
        stream: u32,
        headers: Headers,
        fin: bool,
    },
    SynReply {
        stream: u32,
        headers: Headers,
        fin: bool,
    },
    RstStream {
        stream: u32,
        status: u32,
    },
    Ping(u32),
    GoAway {
        last: u32,
        status: u32,
    },
    Headers {
        stream: u32,
        headers: Headers,
        fin: bool,
    },
    Data {
        stream: u32,
        data: Bytes,
        fin: bool,
    },
    /// A frame this side reads and ignores (SETTINGS, WINDOW_UPDATE, a later version's).
    Ignored,
}

/// The header compression of one direction of a connection: one zlib stream for the session,
/// each block ending at a sync flush.
pub struct HeaderCodec {
    inflate: Decompress,
    deflate: Compress,
}

impl Default for HeaderCodec {
    fn default() -> Self {
        let mut deflate = Compress::new(Compression::default(), true);
        // before any data, as zlib requires; it cannot fail then
        let _ = deflate.set_dictionary(DICTIONARY);
        HeaderCodec { inflate: Decompress::new(true), deflate }
    }
}

impl HeaderCodec {
    /// The headers of a compressed block read from the peer.
    pub fn decode(&mut self, mut block: &[u8]) -> Result<Headers, SpdyError> {
        let mut raw = Vec::with_capacity(block.len() * 4 + 64);
        loop {
            let (in_before, out_before) = (self.inflate.total_in(), raw.len());
            let r = self.inflate.decompress_vec(block, &mut raw, FlushDecompress::Sync);
            block = &block[(self.inflate.total_in() - in_before) as usize..];
            match r {
                Err(e) if e.needs_dictionary().is_some() => {
                    self.inflate.set_dictionary(DICTIONARY).map_err(|e| protocol(format!("header block: {e}")))?;
                    continue;
                }
                Err(e) => return Err(protocol(format!("header block: {e}"))),
                Ok(_) => {}
            }
            if raw.len() > MAX_HEADER_BLOCK {
                return Err(protocol("header block too large"));
            }
            if raw.len() == raw.capacity() {
                raw.reserve(4096);
            } else if block.is_empty() || (raw.len() == out_before && self.inflate.total_in() == in_before) {
                break;
            }
        }
        parse_block(&raw)
    }

    /// `headers` as a compressed block for the peer.
    pub fn encode(&mut self, headers: &Headers) -> Vec<u8> {
        let mut raw = Vec::new();
        raw.extend_from_slice(&(headers.len() as u32).to_be_bytes());
        for (name, value) in headers {
            raw.extend_from_slice(&(name.len() as u32).to_be_bytes());
            raw.extend_from_slice(name.as_bytes());
            raw.extend_from_slice(&(value.len() as u32).to_be_bytes());
            raw.extend_from_slice(value.as_bytes());
        }
        let mut out = Vec::with_capacity(raw.len() + 64);
        let mut input = &raw[..];
        loop {
            let before = self.deflate.total_in();
            // a zlib stream in memory cannot fail but for a bug in the backend
            let status = self.deflate.compress_vec(input, &mut out, FlushCompress::Sync);
            input = &input[(self.deflate.total_in() - before) as usize..];
            let full = out.len() == out.capacity();
            if full {
                out.reserve(1024);
            }
            if matches!(status, Err(_) | Ok(Status::StreamEnd)) || (input.is_empty() && !full) {
                break;
            }
        }
        out
    }
}

fn parse_block(raw: &[u8]) -> Result<Headers, SpdyError> {
    let mut at = 0;
    let mut next = |n: usize| -> Result<&[u8], SpdyError> {
        let s = raw.get(at..at + n).ok_or_else(|| protocol("header block cut short"))?;
        at += n;
        Ok(s)
    };
    let word = |b: &[u8]| u32::from_be_bytes([b[0], b[1], b[2], b[3]]) as usize;
    let count = word(next(4)?);
    let mut headers = Vec::with_capacity(count.min(64));
    for _ in 0..count {
        let n = word(next(4)?);
        let name = String::from_utf8_lossy(next(n)?).to_ascii_lowercase();
        let n = word(next(4)?);
        let value = String::from_utf8_lossy(next(n)?).into_owned();
        // several values of one name are NUL-separated
        for v in value.split('\0') {
            headers.push((name.clone(), v.to_string()));
        }
    }
    Ok(headers)
}

fn be32(b: &[u8]) -> u32 {
    u32::from_be_bytes([b[0], b[1], b[2], b[3]])
}

/// Reads the next frame; `None` at the connection's end between frames.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R, codec: &mut HeaderCodec) -> Result<Option<Frame>, SpdyError> {
    let mut head = [0u8; 8];
    match r.read_exact(&mut head[..1]).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e.into()),
    }
    r.read_exact(&mut head[1..]).await?;
    let (first, second) = (be32(&head[..4]), be32(&head[4..]));
    let flags = (second >> 24) as u8;
    let len = (second & 0x00ff_ffff) as usize;
    let mut payload = vec![0u8; len];
    r.read_exact(&mut payload).await?;
    let fin = flags & FLAG_FIN != 0;
    if first & 0x8000_0000 == 0 {
        let stream = first & 0x7fff_ffff;
        return Ok(Some(Frame::Data { stream, data: Bytes::from(payload), fin }));
    }
    let version = ((first >> 16) & 0x7fff) as u16;
    if version != VERSION {
        return Err(protocol(format!("version {version}, not {VERSION}")));
    }
    let need = |n: usize| if payload.len() < n { Err(protocol("control frame cut short")) } else { Ok(()) };
    let frame = match (first & 0xffff) as u16 {
        SYN_STREAM => {
            need(10)?;
            Frame::SynStream { stream: be32(&payload) & 0x7fff_ffff, headers: codec.decode(&payload[10..])?, fin }
        }
        SYN_REPLY => {
            need(4)?;
            Frame::SynReply { stream: be32(&payload) & 0x7fff_ffff, headers: codec.decode(&payload[4..])?, fin }
        }
        HEADERS => {
            need(4)?;
            Frame::Headers { stream: be32(&payload) & 0x7fff_ffff, headers: codec.decode(&payload[4..])?, fin }
        }
        RST_STREAM => {
            need(8)?;
            Frame::RstStream { stream: be32(&payload) & 0x7fff_ffff, status: be32(&payload[4..]) }
        }
        PING => {
            need(4)?;
            Frame::Ping(be32(&payload))
        }
        GOAWAY => {
            need(8)?;
            Frame::GoAway { last: be32(&payload) & 0x7fff_ffff, status: be32(&payload[4..]) }
        }
        _ => Frame::Ignored,
    };
    Ok(Some(frame))
}

fn control(kind: u16, flags: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(8 + payload.len());
    out.extend_from_slice(&(0x8000_0000 | (u32::from(VERSION) << 16) | u32::from(kind)).to_be_bytes());
    out.extend_from_slice(&((u32::from(flags) << 24) | payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// `frame` on the wire (its header block compressed with `codec`).
pub fn encode_frame(frame: &Frame, codec: &mut HeaderCodec) -> Vec<u8> {
    let fin = |f: bool| if f { FLAG_FIN } else { 0 };
    let with_block = |kind: u16, flags: u8, prefix: &[u8], headers: &Headers, codec: &mut HeaderCodec| {
        let mut p = prefix.to_vec();
        p.extend_from_slice(&codec.encode(headers));
        control(kind, flags, &p)
    };
    match frame {
        Frame::SynStream { stream, headers, fin: f } => {
            let mut prefix = stream.to_be_bytes().to_vec();
            prefix.extend_from_slice(&[0; 6]);
            with_block(SYN_STREAM, fin(*f), &prefix, headers, codec)
        }
        Frame::SynReply { stream, headers, fin: f } => {
            with_block(SYN_REPLY, fin(*f), &stream.to_be_bytes(), headers, codec)
        }
        Frame::Headers { stream, headers, fin: f } => {
            with_block(HEADERS, fin(*f), &stream.to_be_bytes(), headers, codec)
        }
        Frame::RstStream { stream, status } => {
            control(RST_STREAM, 0, &[stream.to_be_bytes(), status.to_be_bytes()].concat())
        }
        Frame::Ping(id) => control(PING, 0, &id.to_be_bytes()),
        Frame::GoAway { last, status } => control(GOAWAY, 0, &[last.to_be_bytes(), status.to_be_bytes()].concat()),
        Frame::Data { stream, data, fin: f } => {
            let mut out = Vec::with_capacity(8 + data.len());
            out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
            out.extend_from_slice(&((u32::from(fin(*f)) << 24) | data.len() as u32).to_be_bytes());
            out.extend_from_slice(data);
            out
        }
        Frame::Ignored => Vec::new(),
    }
}

/// What the session's writer is asked to do.
enum Out {
    Frame(Frame),
    /// GOAWAY, then close the connection.
    Close,
}

/// A stream the client opened, replied to.
pub struct Stream {
    pub id: u32,
    pub headers: Headers,
    /// What the client sends on it; the channel ends at its FIN, a reset or the session's end.
    pub data: mpsc::Receiver<Bytes>,
    pub writer: StreamWriter,
}

/// This side of one stream (cheap to clone).
#[derive(Clone)]
pub struct StreamWriter {
    id: u32,
    out: mpsc::Sender<Out>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::BrokenPipe, "the SPDY session has ended")
}

impl StreamWriter {
    /// Sends `data` on the stream (in frames of at most 32 KiB).
    pub async fn send(&self, data: &[u8]) -> io::Result<()> {
        for chunk in data.chunks(MAX_DATA) {
            let frame = Frame::Data { stream: self.id, data: Bytes::copy_from_slice(chunk), fin: false };
            self.out.send(Out::Frame(frame)).await.map_err(|_| gone())?;
        }
        Ok(())
    }

    /// Ends this side of the stream (FIN); the client's side stays open.
    pub async fn close(&self) {
        let _ = self.out.send(Out::Frame(Frame::Data { stream: self.id, data: Bytes::new(), fin: true })).await;
    }

    /// Abandons the stream both ways (RST_STREAM, CANCEL).
    pub async fn reset(&self) {
        let _ = self.out.send(Out::Frame(Frame::RstStream { stream: self.id, status: CANCEL })).await;
    }

    /// Resolves once the session can no longer carry anything.
    pub async fn ended(&self) {
        self.out.closed().await
    }
}

/// The server side of one SPDY session. Dropping it does not end the session; [`Session::close`]
/// does, and so does the client's going away.
pub struct Session {
    out: mpsc::Sender<Out>,
}

impl Session {
    /// Serves a session on `io` (the connection after its HTTP upgrade): each stream the client
    /// opens is replied to and comes out of the receiver, which ends with the session.
    pub fn serve<IO>(io: IO) -> (Session, mpsc::Receiver<Stream>)
    where
        IO: AsyncRead + AsyncWrite + Send + 'static,
    {
        let (mut rd, mut wr) = tokio::io::split(io);
        let (out_tx, mut out_rx) = mpsc::channel::<Out>(STREAM_BUFFER);
        let (streams_tx, streams_rx) = mpsc::channel(16);
        // The writer: every frame of this side goes through it, in order (a stream's reply is
        // out before its data).
        tokio::spawn(async move {
            let mut codec = HeaderCodec::default();
            let mut last = 0;
            while let Some(out) = out_rx.recv().await {
                let bytes = match out {
                    Out::Frame(Frame::SynReply { stream, headers, fin }) => {
                        last = last.max(stream);
                        encode_frame(&Frame::SynReply { stream, headers, fin }, &mut codec)
                    }
                    Out::Frame(f) => encode_frame(&f, &mut codec),
                    Out::Close => {
                        let _ = wr.write_all(&encode_frame(&Frame::GoAway { last, status: 0 }, &mut codec)).await;
                        break;
                    }
                };
                if wr.write_all(&bytes).await.is_err() {
                    break;
                }
            }
            let _ = wr.shutdown().await;
            // anything still queued or sent later fails: the streams see `ended`
            out_rx.close();
        });
        let out = out_tx.clone();
        tokio::spawn(async move {
            let mut codec = HeaderCodec::default();
            let mut open: HashMap<u32, mpsc::Sender<Bytes>> = HashMap::new();
            loop {
                let frame = match read_frame(&mut rd, &mut codec).await {
                    Ok(Some(f)) => f,
                    Ok(None) | Err(_) => break,
                };
                match frame {
                    Frame::SynStream { stream, headers, fin } => {
                        if stream == 0 || stream % 2 == 0 || open.contains_key(&stream) {
                            let rst = Frame::RstStream { stream, status: PROTOCOL_ERROR };
                            let _ = out.send(Out::Frame(rst)).await;
                            continue;
                        }
                        let reply = Frame::SynReply { stream, headers: Vec::new(), fin: false };
                        if out.send(Out::Frame(reply)).await.is_err() {
                            break;
                        }
                        let (tx, rx) = mpsc::channel(STREAM_BUFFER);
                        if !fin {
                            open.insert(stream, tx);
                        }
                        let writer = StreamWriter { id: stream, out: out.clone() };
                        if streams_tx.send(Stream { id: stream, headers, data: rx, writer }).await.is_err() {
                            break;
                        }
                    }
                    Frame::Data { stream, data, fin } => {
                        if let Some(tx) = open.get(&stream) {
                            if !data.is_empty() && tx.send(data).await.is_err() {
                                // nobody reads it any more: what else comes is dropped
                                open.remove(&stream);
                            }
                        }
                        if fin {
                            open.remove(&stream);
                        }
                    }
                    Frame::Headers { stream, fin: true, .. } | Frame::RstStream { stream, .. } => {
                        open.remove(&stream);
                    }
                    Frame::Ping(id) => {
                        let _ = out.send(Out::Frame(Frame::Ping(id))).await;
                    }
                    Frame::GoAway { .. } => break,
                    Frame::SynReply { .. } | Frame::Headers { .. } | Frame::Ignored => {}
                }
            }
            // the streams' channels end here; the writer is told to stop
            drop(open);
            let _ = out.send(Out::Close).await;
        });
        (Session { out: out_tx }, streams_rx)
    }

    /// Ends the session: GOAWAY, then the connection closes (after what was queued before).
    pub async fn close(&self) {
        let _ = self.out.send(Out::Close).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::Client;

    #[test]
    fn the_dictionary_is_spdy3s() {
        assert_eq!(DICTIONARY.len(), 1423);
        // its adler-32 is what a zlib stream with it names in its header
        let mut c = Compress::new(Compression::default(), true);
        assert_eq!(c.set_dictionary(DICTIONARY).unwrap(), 0xe3c6_a7c2);
    }

    #[test]
    fn header_blocks_round_trip_across_one_zlib_stream() {
        let (mut ours, mut theirs) = (HeaderCodec::default(), HeaderCodec::default());
        let a: Headers = vec![("streamtype".into(), "error".into()), ("port".into(), "80".into())];
        let b: Headers = vec![("streamtype".into(), "data".into()), ("requestid".into(), "0".into())];
        for h in [&a, &b, &Vec::new(), &a] {
            let block = ours.encode(h);
            assert_eq!(&theirs.decode(&block).unwrap(), h);
        }
    }

    #[test]
    fn several_values_of_a_name_come_apart() {
        let mut c = HeaderCodec::default();
        let block =
            c.encode(&vec![("x-stream-protocol-version".into(), "v4.channel.k8s.io\0v3.channel.k8s.io".into())]);
        let h = HeaderCodec::default().decode(&block).unwrap();
        assert_eq!(h.len(), 2);
        assert_eq!(header(&h, "x-stream-protocol-version"), Some("v4.channel.k8s.io"));
    }

    #[test]
    fn a_corrupt_block_is_an_error() {
        assert!(HeaderCodec::default().decode(b"\x78\xbb\x00\x00garbage").is_err());
    }

    #[tokio::test]
    async fn frames_round_trip() {
        let frames = vec![
            Frame::SynStream { stream: 1, headers: vec![("streamtype".into(), "stdout".into())], fin: false },
            Frame::SynReply { stream: 1, headers: vec![], fin: false },
            Frame::Data { stream: 1, data: Bytes::from_static(b"hello"), fin: true },
            Frame::RstStream { stream: 3, status: CANCEL },
            Frame::Ping(7),
            Frame::GoAway { last: 3, status: 0 },
        ];
        let (mut enc, mut dec) = (HeaderCodec::default(), HeaderCodec::default());
        let wire: Vec<u8> = frames.iter().flat_map(|f| encode_frame(f, &mut enc)).collect();
        let mut r = &wire[..];
        for f in &frames {
            assert_eq!(read_frame(&mut r, &mut dec).await.unwrap().as_ref(), Some(f));
        }
        assert_eq!(read_frame(&mut r, &mut dec).await.unwrap(), None);
    }

    #[tokio::test]
    async fn a_session_replies_to_streams_and_carries_their_data() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (session, mut streams) = Session::serve(ours);
        let mut client = Client::over(theirs);
        let id = client.open(&[("streamtype", "stdin")]).await.unwrap();
        let mut s = streams.recv().await.unwrap();
        assert_eq!((s.id, header(&s.headers, "streamtype")), (id, Some("stdin")));
        assert_eq!(client.next().await.unwrap(), Some(Frame::SynReply { stream: id, headers: vec![], fin: false }));
        client.send_frame(Frame::Data { stream: id, data: Bytes::from_static(b"in"), fin: true }).await.unwrap();
        assert_eq!(s.data.recv().await.as_deref(), Some(&b"in"[..]));
        assert_eq!(s.data.recv().await, None, "the client's FIN ends the channel");
        s.writer.send(b"out").await.unwrap();
        s.writer.close().await;
        client.send_frame(Frame::Ping(1)).await.unwrap();
        assert_eq!(
            client.next().await.unwrap(),
            Some(Frame::Data { stream: id, data: Bytes::from_static(b"out"), fin: false })
        );
        assert_eq!(client.next().await.unwrap(), Some(Frame::Data { stream: id, data: Bytes::new(), fin: true }));
        assert_eq!(client.next().await.unwrap(), Some(Frame::Ping(1)), "a ping is echoed");
        session.close().await;
        assert_eq!(client.next().await.unwrap(), Some(Frame::GoAway { last: id, status: 0 }));
        assert_eq!(client.next().await.unwrap(), None);
        s.writer.ended().await;
    }

    #[tokio::test]
    async fn the_clients_end_ends_the_session() {
        let (ours, theirs) = tokio::io::duplex(1 << 16);
        let (_session, mut streams) = Session::serve(ours);
        let mut client = Client::over(theirs);
        client.open(&[("streamtype", "stdout")]).await.unwrap();
        let mut s = streams.recv().await.unwrap();
        drop(client);
        assert_eq!(s.data.recv().await, None);
        assert!(streams.recv().await.is_none());
        s.writer.ended().await;
        assert!(s.writer.send(b"late").await.is_err());
    }
}
