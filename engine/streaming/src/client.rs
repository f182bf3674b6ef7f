//! The client side of the streaming protocols, as client-go's SPDY executor and port-forwarder
//! speak them: the HTTP upgrade of a streaming URL, then streams opened, written and read
//! frame by frame. For programs that test a streaming server; the runtime never uses it.

use std::collections::HashMap;
use std::io;

use bytes::Bytes;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

use crate::spdy::{encode_frame, read_frame, Frame, HeaderCodec};

/// One stream's data as read, and whether the server ended its side.
pub type Received = HashMap<u32, (Vec<u8>, bool)>;

/// A client's SPDY session.
pub struct Client<IO> {
    rd: ReadHalf<IO>,
    wr: WriteHalf<IO>,
    enc: HeaderCodec,
    dec: HeaderCodec,
    next: u32,
    /// The protocol the server chose (`X-Stream-Protocol-Version`).
    pub protocol: String,
}

impl Client<TcpStream> {
    /// Connects to a streaming `url` (`http://host:port/path`) and upgrades it to SPDY/3.1,
    /// offering `protocols`; a server that does not switch is an error with its status line.
    pub async fn connect(url: &str, protocols: &[&str]) -> io::Result<Client<TcpStream>> {
        let bad = |m: String| io::Error::new(io::ErrorKind::InvalidInput, m);
        let rest = url.strip_prefix("http://").ok_or_else(|| bad(format!("not an http URL: {url}")))?;
        let (host, path) = rest.split_once('/').ok_or_else(|| bad(format!("no path in {url}")))?;
        let mut c = TcpStream::connect(host).await?;
        let mut head = format!("POST /{path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: SPDY/3.1\r\n");
        for p in protocols {
            head.push_str(&format!("X-Stream-Protocol-Version: {p}\r\n"));
        }
        head.push_str("Content-Length: 0\r\n\r\n");
        c.write_all(head.as_bytes()).await?;
        // byte by byte: what follows the head is the session's
        let mut answer = Vec::new();
        while !answer.ends_with(b"\r\n\r\n") {
            let mut b = [0u8; 1];
            if c.read(&mut b).await? == 0 {
                break;
            }
            answer.push(b[0]);
        }
        let answer = String::from_utf8_lossy(&answer).into_owned();
        let status = answer.lines().next().unwrap_or("").to_string();
        if !status.starts_with("HTTP/1.1 101") {
            return Err(io::Error::new(io::ErrorKind::ConnectionRefused, status));
        }
        let protocol = answer
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(n, _)| n.trim().eq_ignore_ascii_case("x-stream-protocol-version"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        let mut client = Client::over(c);
        client.protocol = protocol;
        Ok(client)
    }
}

impl<IO: AsyncRead + AsyncWrite> Client<IO> {
    /// A client on a connection already upgraded.
    pub fn over(io: IO) -> Client<IO> {
        let (rd, wr) = tokio::io::split(io);
        Client { rd, wr, enc: HeaderCodec::default(), dec: HeaderCodec::default(), next: 1, protocol: String::new() }
    }

    pub async fn send_frame(&mut self, f: Frame) -> io::Result<()> {
        self.wr.write_all(&encode_frame(&f, &mut self.enc)).await
    }

    /// Opens a stream with `headers`; its id (the server's reply comes as a frame).
    pub async fn open(&mut self, headers: &[(&str, &str)]) -> io::Result<u32> {
        let id = self.next;
        self.next += 2;
        let headers = headers.iter().map(|(n, v)| (n.to_string(), v.to_string())).collect();
        self.send_frame(Frame::SynStream { stream: id, headers, fin: false }).await?;
        Ok(id)
    }

    /// Sends `data` on `stream`, ending this side of it with `fin`.
    pub async fn send(&mut self, stream: u32, data: &[u8], fin: bool) -> io::Result<()> {
        self.send_frame(Frame::Data { stream, data: Bytes::copy_from_slice(data), fin }).await
    }

    /// The next frame from the server; `None` at the connection's end.
    pub async fn next(&mut self) -> io::Result<Option<Frame>> {
        read_frame(&mut self.rd, &mut self.dec).await.map_err(|e| match e {
            crate::spdy::SpdyError::Io(e) => e,
            e => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
        })
    }

    /// Reads frames into `got` until `done(got)` holds; false if the session ended first.
    pub async fn read_until(&mut self, got: &mut Received, done: impl Fn(&Received) -> bool) -> io::Result<bool> {
        while !done(got) {
            match self.next().await? {
                Some(Frame::Data { stream, data, fin }) => {
                    let e = got.entry(stream).or_default();
                    e.0.extend_from_slice(&data);
                    e.1 |= fin;
                }
                Some(Frame::GoAway { .. }) | None => return Ok(done(got)),
                Some(_) => {}
            }
        }
        Ok(true)
    }

    /// Reads until the server goes away: what each stream got.
    pub async fn read_to_end(&mut self) -> io::Result<Received> {
        let mut got = Received::new();
        self.read_until(&mut got, |_| false).await?;
        Ok(got)
    }
}
