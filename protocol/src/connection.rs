//! A framed, typed connection over any byte stream.
//!
//! The reader and writer halves are separate types so a connection can be
//! split between a read loop and a writer task; both keep one reusable
//! buffer, so a long-lived connection allocates at most one frame limit.
//!
//! There is no plain TCP constructor: every network connection is made by
//! [`crate::tls`] and is a [`crate::tls::SecureConnection`]. The generic
//! [`Connection::new`] remains for local streams (the daemon's control
//! socket, a Unix socket in the owner-only home) and in-memory tests.

use crate::codec;
use crate::error::ProtocolError;
use crate::frame::{self, Header, HEADER_LEN};
use crate::messages::{Hello, PeerReply, Reply, Role, MAGIC};
use crate::PROTOCOL_VERSION;
use serde::{de::DeserializeOwned, Serialize};
use std::io::IoSlice;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};

/// How long the other end has to complete the handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Read and write buffers of a connection. TLS buffers a record (16 KiB)
/// below this already; bodies larger than it bypass it.
const IO_BUF: usize = 32 * 1024;

/// A frame body grows by at most this much per read: memory follows what
/// has arrived, never what a header claims.
pub const BODY_CHUNK: usize = 64 * 1024;

/// A body buffer larger than this is given back after its frame: a
/// connection keeps at most a piece's worth between frames.
const KEEP_BODY: usize = 1 << 20;

/// Buffers a reader keeps given back by [`FrameReader::recycle`].
const SPARE_BODIES: usize = 1;

/// How long a frame may take to arrive once its first byte has: a fixed
/// allowance plus the time its length takes at [`MIN_FRAME_RATE`]. A body
/// that trickles in slower ends the connection.
pub const FRAME_ALLOWANCE: Duration = Duration::from_secs(30);

/// The slowest rate, in bytes per second, a frame may arrive at (beyond
/// [`FRAME_ALLOWANCE`]).
pub const MIN_FRAME_RATE: u64 = 16 * 1024;

/// The deadline of a frame of `len` bytes, counted from its first byte.
pub fn frame_deadline(len: usize) -> Duration {
    FRAME_ALLOWANCE + Duration::from_millis(len as u64 * 1000 / MIN_FRAME_RATE)
}

/// The read half: whole frames out of a byte stream.
pub struct FrameReader<R> {
    stream: BufReader<R>,
    body: Vec<u8>,
    /// Buffers given back for later bodies ([`FrameReader::recycle`]).
    spares: Vec<Vec<u8>>,
    /// How long the stream may stay quiet between frames; `None` waits
    /// forever.
    idle: Option<Duration>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(stream: R) -> Self {
        FrameReader {
            stream: BufReader::with_capacity(IO_BUF, stream),
            body: Vec::new(),
            spares: Vec::new(),
            idle: None,
        }
    }

    /// Ends the stream with [`ProtocolError::Timeout`] when no frame starts
    /// within `idle` of the previous one.
    pub fn set_idle_timeout(&mut self, idle: Option<Duration>) {
        self.idle = idle;
    }

    /// The next frame's raw body; `None` on a clean end of stream between
    /// frames. The declared length is checked before anything is buffered,
    /// the body grows as its bytes arrive, and the whole frame must arrive
    /// within [`frame_deadline`] of its first byte.
    pub async fn read_body(&mut self) -> Result<Option<&[u8]>, ProtocolError> {
        if self.body.capacity() > KEEP_BODY {
            self.body = Vec::new();
        }
        self.body.clear();
        let mut head = [0u8; HEADER_LEN];
        // The first byte: as long as the idle deadline allows.
        let first = match self.idle {
            None => self.stream.read(&mut head).await,
            Some(idle) => match tokio::time::timeout(idle, self.stream.read(&mut head)).await {
                Ok(r) => r,
                Err(_) => {
                    return Err(ProtocolError::Timeout {
                        what: "the next frame (idle connection)",
                        ms: crate::millis(idle),
                    })
                }
            },
        };
        let got = match first {
            // TLS reports a peer that closed without close_notify this
            // way. Between frames that loses nothing (frames carry their
            // length), so it ends the stream like a plain TCP close.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => 0,
            r => r?,
        };
        if got == 0 {
            return Ok(None);
        }
        let started = tokio::time::Instant::now();
        let header_deadline = started + FRAME_ALLOWANCE;
        let rest = async {
            let mut got = got;
            while got < HEADER_LEN {
                let n = self.stream.read(&mut head[got..]).await?;
                if n == 0 {
                    return Err(ProtocolError::Truncated {
                        got,
                        expected: HEADER_LEN,
                    });
                }
                got += n;
            }
            Ok(())
        };
        tokio::time::timeout_at(header_deadline, rest)
            .await
            .map_err(|_| ProtocolError::Timeout {
                what: "a frame header",
                ms: crate::millis(FRAME_ALLOWANCE),
            })??;
        let Header::Body(len) = frame::check_header(&head)? else {
            return Err(ProtocolError::Truncated {
                got: HEADER_LEN,
                expected: HEADER_LEN,
            });
        };
        let deadline = frame_deadline(len);
        let body = &mut self.body;
        let stream = &mut self.stream;
        let fill = async {
            while body.len() < len {
                if body.capacity() == body.len() {
                    // Full: grow by doubling, so a body is copied O(1)
                    // times on average, yet never to more than twice what
                    // has arrived plus a chunk.
                    let target = (body.capacity() * 2).max(body.len() + BODY_CHUNK).min(len);
                    body.reserve_exact(target - body.len());
                }
                let room = (body.capacity() - body.len()).min(len - body.len());
                let n = (&mut *stream).take(room as u64).read_buf(body).await?;
                if n == 0 {
                    return Err(ProtocolError::Truncated {
                        got: body.len(),
                        expected: len,
                    });
                }
            }
            Ok(())
        };
        tokio::time::timeout_at(started + deadline, fill)
            .await
            .map_err(|_| ProtocolError::Timeout {
                what: "a frame body that trickles in",
                ms: crate::millis(deadline),
            })??;
        Ok(Some(&self.body[..len]))
    }

    /// The next peer reply; a piece keeps the frame's body buffer
    /// ([`codec::decode_peer_reply`]), and the next frame goes into a
    /// buffer given back with [`FrameReader::recycle`] or, with none, a new
    /// one of the same capacity, so a piece's body is neither copied out
    /// nor grown (and copied) again chunk by chunk. Only the fetching side
    /// of a peer link reads pieces this way, from peers it chose.
    pub async fn read_peer_reply(&mut self) -> Result<Option<Reply<PeerReply>>, ProtocolError> {
        let Some(body) = self.read_body().await? else {
            return Ok(None);
        };
        if !codec::is_piece_reply(body) {
            // A small reply (a `Have`, an error): the buffer stays.
            return codec::decode(body).map(Some);
        }
        let next = match self.spares.pop() {
            Some(b) => b,
            None => Vec::with_capacity(self.body.capacity().min(KEEP_BODY)),
        };
        codec::decode_peer_reply(std::mem::replace(&mut self.body, next)).map(Some)
    }

    /// Takes a buffer back (one a piece kept) for a later frame's body.
    /// At most [`SPARE_BODIES`] is kept, none over the size a connection
    /// keeps between frames.
    pub fn recycle(&mut self, mut buf: Vec<u8>) {
        if buf.capacity() <= KEEP_BODY && self.spares.len() < SPARE_BODIES {
            buf.clear();
            self.spares.push(buf);
        }
    }

    /// The next frame, decoded; `None` on a clean end of stream.
    pub async fn read_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        match self.read_body().await? {
            None => Ok(None),
            Some(body) => codec::decode(body).map(Some),
        }
    }
}

/// The write half: one frame per call, flushed, so replies never sit in a
/// buffer while the other end waits.
pub struct FrameWriter<W> {
    stream: BufWriter<W>,
    buf: Vec<u8>,
}

impl<W: AsyncWrite + Unpin> FrameWriter<W> {
    pub fn new(stream: W) -> Self {
        FrameWriter {
            stream: BufWriter::with_capacity(IO_BUF, stream),
            buf: Vec::new(),
        }
    }

    pub async fn write_frame<T: Serialize>(&mut self, value: &T) -> Result<(), ProtocolError> {
        self.queue_frame(value).await?;
        self.flush().await
    }

    /// One frame into the write buffer, not flushed: a sender with more
    /// frames ready writes them all, then flushes once ([`Self::flush`]),
    /// so they share system calls and TLS records.
    pub async fn queue_frame<T: Serialize>(&mut self, value: &T) -> Result<(), ProtocolError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER_LEN]);
        codec::encode_into(value, &mut self.buf)?;
        let body_len = self.buf.len() - HEADER_LEN;
        self.buf[..HEADER_LEN].copy_from_slice(&frame::header(body_len));
        self.stream.write_all(&self.buf).await?;
        if self.buf.capacity() > IO_BUF * 4 {
            self.buf = Vec::new();
        }
        Ok(())
    }

    /// Sends what [`Self::queue_frame`] buffered.
    pub async fn flush(&mut self) -> Result<(), ProtocolError> {
        self.stream.flush().await?;
        Ok(())
    }

    /// `Reply { id, body: PeerReply::Piece { data } }`, flushed, with the
    /// piece's bytes written from `data` itself rather than copied into the
    /// frame buffer first, and in the same write as the frame's head (one
    /// vectored write: over TLS, the head shares the piece's first record
    /// instead of costing a record and a `writev` of its own).
    pub async fn write_piece(&mut self, id: u64, data: &[u8]) -> Result<(), ProtocolError> {
        self.write_bytes(id, data, false).await
    }

    /// `Reply { id, body: PeerReply::Part { data } }`, as [`Self::write_piece`].
    pub async fn write_part(&mut self, id: u64, data: &[u8]) -> Result<(), ProtocolError> {
        self.write_bytes(id, data, true).await
    }

    async fn write_bytes(&mut self, id: u64, data: &[u8], part: bool) -> Result<(), ProtocolError> {
        self.buf.clear();
        self.buf.extend_from_slice(&[0; HEADER_LEN]);
        if part {
            codec::encode_part_head(id, data.len(), &mut self.buf)?;
        } else {
            codec::encode_piece_head(id, data.len(), &mut self.buf)?;
        }
        let body_len = self.buf.len() - HEADER_LEN + data.len();
        if body_len > crate::MAX_FRAME_LEN {
            return Err(ProtocolError::FrameTooLarge {
                len: body_len as u64,
                limit: crate::MAX_FRAME_LEN,
            });
        }
        self.buf[..HEADER_LEN].copy_from_slice(&frame::header(body_len));
        // Every frame is flushed, so the write buffer is empty here: write
        // past it.
        self.stream.flush().await?;
        let stream = self.stream.get_mut();
        let (head, mut sent) = (self.buf.len(), 0);
        while sent < head + data.len() {
            let n = if sent < head {
                let parts = [IoSlice::new(&self.buf[sent..]), IoSlice::new(data)];
                stream.write_vectored(&parts).await?
            } else {
                stream.write(&data[sent - head..]).await?
            };
            if n == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::WriteZero).into());
            }
            sent += n;
        }
        stream.flush().await?;
        Ok(())
    }

    /// Bytes as they are, not a frame, flushed: only for tests that must
    /// break the framing (the lying peers of the end-to-end tests).
    pub async fn write_unframed(&mut self, raw: &[u8]) -> Result<(), ProtocolError> {
        self.stream.write_all(raw).await?;
        self.stream.flush().await?;
        Ok(())
    }

    pub async fn shutdown(&mut self) -> Result<(), ProtocolError> {
        self.stream.shutdown().await?;
        Ok(())
    }
}

/// Both halves of one connection.
pub struct Connection<R, W> {
    pub reader: FrameReader<R>,
    pub writer: FrameWriter<W>,
}

/// Says only what it is, so results holding a connection can be unwrapped.
impl<R, W> std::fmt::Debug for Connection<R, W> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Connection")
    }
}

impl<R: AsyncRead + Unpin, W: AsyncWrite + Unpin> Connection<R, W> {
    pub fn new(reader: R, writer: W) -> Self {
        Connection {
            reader: FrameReader::new(reader),
            writer: FrameWriter::new(writer),
        }
    }

    /// Sends our [`Hello`] and reads theirs, refusing a wrong magic or
    /// version. Returns the other end's role.
    pub async fn handshake(&mut self, me: Role) -> Result<Role, ProtocolError> {
        let hello = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION,
            role: me,
        };
        let exchange = async {
            self.writer.write_frame(&hello).await?;
            let theirs: Hello = self
                .reader
                .read_frame()
                .await?
                .ok_or(ProtocolError::Closed)?;
            if theirs.magic != MAGIC {
                return Err(ProtocolError::NotFileShare);
            }
            if theirs.version != PROTOCOL_VERSION {
                return Err(ProtocolError::Version {
                    ours: PROTOCOL_VERSION,
                    theirs: theirs.version,
                });
            }
            Ok(theirs.role)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, exchange)
            .await
            .map_err(|_| ProtocolError::Timeout {
                what: "handshake",
                ms: crate::millis(HANDSHAKE_TIMEOUT),
            })?
    }

    pub async fn read_frame<T: DeserializeOwned>(&mut self) -> Result<Option<T>, ProtocolError> {
        self.reader.read_frame().await
    }

    pub async fn write_frame<T: Serialize>(&mut self, value: &T) -> Result<(), ProtocolError> {
        self.writer.write_frame(value).await
    }

    pub fn into_split(self) -> (FrameReader<R>, FrameWriter<W>) {
        (self.reader, self.writer)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use crate::messages::peer::PeerReply;
    use crate::messages::tracker::{TrackerReply, TrackerRequest};
    use crate::messages::{Reply, Request};
    use crate::MAX_FRAME_LEN;

    fn pipe() -> (
        Connection<
            tokio::io::ReadHalf<tokio::io::DuplexStream>,
            tokio::io::WriteHalf<tokio::io::DuplexStream>,
        >,
        tokio::io::DuplexStream,
    ) {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (r, w) = tokio::io::split(a);
        (Connection::new(r, w), b)
    }

    #[tokio::test]
    async fn round_trip_of_every_channel() {
        let (a, b) = tokio::io::duplex(1 << 20);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut a = Connection::new(ar, aw);
        let mut b = Connection::new(br, bw);
        let req = Request {
            id: 7,
            body: TrackerRequest::CreateUser(crate::messages::tracker::CreateUser {
                user: "alice".into(),
                password: "pw".into(),
            }),
        };
        a.write_frame(&req).await.unwrap();
        assert_eq!(
            b.read_frame::<Request<TrackerRequest>>().await.unwrap(),
            Some(req)
        );
        let reply: Reply<Result<TrackerReply, ErrorCode>> = Reply {
            id: 7,
            body: Err(ErrorCode::UserExists("alice".into())),
        };
        b.write_frame(&reply).await.unwrap();
        assert_eq!(a.read_frame().await.unwrap(), Some(reply));
        let piece = Reply {
            id: 1,
            body: PeerReply::Piece {
                data: vec![9; 512 * 1024].into(),
            },
        };
        a.write_frame(&piece).await.unwrap();
        assert_eq!(b.read_frame().await.unwrap(), Some(piece.clone()));
        // The same piece written from its bytes and read in place, then
        // its buffer recycled for the next one.
        a.writer.write_piece(2, &[7; 512 * 1024]).await.unwrap();
        let got = b.reader.read_peer_reply().await.unwrap().unwrap();
        assert_eq!(got.id, 2);
        let PeerReply::Piece { data } = got.body else {
            panic!("{got:?}")
        };
        assert!(data.iter().all(|&x| x == 7) && data.len() == 512 * 1024);
        b.reader.recycle(data.into_buffer());
        a.write_frame(&piece).await.unwrap();
        assert_eq!(b.reader.read_peer_reply().await.unwrap(), Some(piece));
        drop(a);
        assert_eq!(b.read_frame::<Reply<PeerReply>>().await.unwrap(), None);
    }

    #[tokio::test]
    async fn oversized_declared_length_is_refused() {
        let (mut conn, mut raw) = pipe();
        raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        let err = conn.read_frame::<Hello>().await.unwrap_err();
        assert!(matches!(err, ProtocolError::FrameTooLarge { .. }), "{err}");
    }

    #[tokio::test]
    async fn truncated_body_is_an_error_not_eof() {
        let (mut conn, mut raw) = pipe();
        raw.write_all(&frame::header(100)).await.unwrap();
        raw.write_all(&[1, 2, 3]).await.unwrap();
        drop(raw);
        let err = conn.read_frame::<Hello>().await.unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Truncated {
                    got: 3,
                    expected: 100
                }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn memory_follows_what_arrived_not_the_header() {
        let (mut conn, mut raw) = pipe();
        raw.write_all(&frame::header(MAX_FRAME_LEN)).await.unwrap();
        raw.write_all(&[1]).await.unwrap();
        drop(raw);
        let err = conn.read_frame::<Hello>().await.unwrap_err();
        assert!(
            matches!(err, ProtocolError::Truncated { got: 1, .. }),
            "{err}"
        );
        assert!(conn.reader.body.capacity() <= BODY_CHUNK);
    }

    #[tokio::test(start_paused = true)]
    async fn a_trickling_body_times_out() {
        let (mut conn, mut raw) = pipe();
        raw.write_all(&frame::header(1000)).await.unwrap();
        let trickle = async move {
            for _ in 0..1000 {
                raw.write_all(&[0]).await.unwrap();
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        };
        tokio::select! {
            r = conn.read_frame::<Hello>() => {
                let err = r.unwrap_err();
                assert!(matches!(err, ProtocolError::Timeout { .. }), "{err}");
            }
            () = trickle => panic!("the trickle outlived the deadline"),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_times_out_between_frames() {
        let (mut conn, _raw) = pipe();
        conn.reader.set_idle_timeout(Some(Duration::from_secs(5)));
        let err = conn.read_frame::<Hello>().await.unwrap_err();
        assert!(matches!(err, ProtocolError::Timeout { .. }), "{err}");
    }

    #[tokio::test]
    async fn garbage_body_is_a_decode_error() {
        let (mut conn, mut raw) = pipe();
        raw.write_all(&frame::header(5)).await.unwrap();
        raw.write_all(&[0xff; 5]).await.unwrap();
        let err = conn
            .read_frame::<Request<TrackerRequest>>()
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                ProtocolError::Decode(_) | ProtocolError::TrailingBytes { .. }
            ),
            "{err}"
        );
    }

    #[tokio::test]
    async fn lying_inner_length_cannot_allocate_past_the_limit() {
        // A Vec whose encoded length claims 2^60 elements inside a small frame.
        let (mut conn, mut raw) = pipe();
        let mut body = vec![7u8]; // request id
        body.push(0); // variant CreateUser
        body.push(253); // varint u64 marker
        body.extend_from_slice(&(1u64 << 60).to_le_bytes());
        raw.write_all(&frame::header(body.len())).await.unwrap();
        raw.write_all(&body).await.unwrap();
        assert!(conn.read_frame::<Request<TrackerRequest>>().await.is_err());
    }

    #[tokio::test]
    async fn writer_refuses_oversized_message() {
        let (mut conn, _raw) = pipe();
        let big = PeerReply::Piece {
            data: vec![0; MAX_FRAME_LEN + 1].into(),
        };
        assert!(matches!(
            conn.write_frame(&big).await.unwrap_err(),
            ProtocolError::FrameTooLarge { .. }
        ));
        assert!(matches!(
            conn.writer
                .write_piece(1, &vec![0; MAX_FRAME_LEN])
                .await
                .unwrap_err(),
            ProtocolError::FrameTooLarge { .. }
        ));
    }

    #[tokio::test]
    async fn handshake_refuses_wrong_version() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        let mut a = Connection::new(ar, aw);
        let mut b = Connection::new(br, bw);
        let bad = Hello {
            magic: MAGIC,
            version: PROTOCOL_VERSION + 1,
            role: Role::Client,
        };
        let (ra, _) = tokio::join!(a.handshake(Role::Client), async {
            b.write_frame(&bad).await.unwrap();
            b.read_frame::<Hello>().await
        });
        assert!(matches!(ra.unwrap_err(), ProtocolError::Version { .. }));
    }
}
