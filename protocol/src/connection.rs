//! One typed connection: length-delimited postcard frames over any async byte stream.
//!
//! No other code reads or writes protocol bytes.

use std::io;

use bytes::Bytes;
use bytes::BytesMut;
use futures::{SinkExt, StreamExt};
use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::length_delimited::LengthDelimitedCodecError;
use tokio_util::codec::{Decoder, Encoder, Framed, LengthDelimitedCodec};

/// Why a frame could not be sent or received.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame of {len} bytes is larger than the limit of {max} bytes")]
    TooLarge { len: usize, max: usize },
    #[error("peer announced a frame larger than the limit of {max} bytes")]
    Oversize { max: usize },
    #[error("frame could not be decoded: {0}")]
    Decode(postcard::Error),
    #[error("message could not be encoded: {0}")]
    Encode(postcard::Error),
    #[error("connection error: {0}")]
    Io(#[from] io::Error),
}

/// The largest frame a server sends (a long lease list or audit query): 16 MiB. Clients
/// accept frames up to this size from a server they trust, while a server accepts only
/// `max_frame` (64 KiB by default) from clients.
pub const MAX_RESPONSE_FRAME: usize = 16 * 1024 * 1024;

/// What the read and the write buffer of a connection start with, and how much written
/// data is buffered before `feed` writes it out. Most frames are well under it, and a
/// server holds thousands of connections that mostly sit idle between heartbeats, so each
/// starts small (tokio-util's default is 8 KiB each); a buffer grows when a larger frame
/// comes or goes.
const BUFFER: usize = 1024;

/// Length-delimited framing with separate limits for what is read and what is written.
struct FrameCodec {
    read: LengthDelimitedCodec,
    write: LengthDelimitedCodec,
}

fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .big_endian()
        .length_field_length(4)
        .max_frame_length(max)
        .new_codec()
}

impl Decoder for FrameCodec {
    type Item = BytesMut;
    type Error = io::Error;

    fn decode(&mut self, src: &mut BytesMut) -> io::Result<Option<BytesMut>> {
        self.read.decode(src)
    }
}

impl Encoder<Bytes> for FrameCodec {
    type Error = io::Error;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> io::Result<()> {
        self.write.encode(item, dst)
    }
}

/// A connection carrying protocol messages.
pub struct Connection<S> {
    framed: Framed<S, FrameCodec>,
    max_read: usize,
    max_write: usize,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Connection<S> {
    /// Wraps a stream; frames longer than `max_frame` are refused in both directions. The
    /// codec checks the length prefix before it reserves any buffer for the frame.
    pub fn new(stream: S, max_frame: usize) -> Self {
        Self::with_limits(stream, max_frame, max_frame)
    }

    /// Wraps a stream with one limit for frames read and another for frames written.
    pub fn with_limits(stream: S, max_read: usize, max_write: usize) -> Self {
        let codec = FrameCodec {
            read: codec(max_read),
            write: codec(max_write),
        };
        Self {
            framed: Framed::with_capacity(stream, codec, BUFFER),
            max_read,
            max_write,
        }
    }

    /// Changes the limit of frames read from now on: a server reads larger frames from a
    /// signed-in admin (bulk requests) than from anyone else.
    pub fn set_max_read(&mut self, max_read: usize) {
        self.framed.codec_mut().read.set_max_frame_length(max_read);
        self.max_read = max_read;
    }

    /// Changes the limit of frames written from now on.
    pub fn set_max_write(&mut self, max_write: usize) {
        self.framed
            .codec_mut()
            .write
            .set_max_frame_length(max_write);
        self.max_write = max_write;
    }

    /// Encodes and sends one message.
    pub async fn send<M: Serialize>(&mut self, message: &M) -> Result<(), FrameError> {
        let frame = self.encode(message)?;
        self.framed.send(frame).await?;
        Ok(())
    }

    /// A message as one frame's bytes, refused when larger than the write limit.
    fn encode<M: Serialize>(&self, message: &M) -> Result<Bytes, FrameError> {
        let bytes = postcard::to_allocvec(message).map_err(FrameError::Encode)?;
        if bytes.len() > self.max_write {
            return Err(FrameError::TooLarge {
                len: bytes.len(),
                max: self.max_write,
            });
        }
        Ok(Bytes::from(bytes))
    }

    /// Encodes one message into the write buffer without flushing it: several answers that
    /// are ready together go out in one write at the next [`flush`](Self::flush) (or
    /// [`send`](Self::send)), not one write each. The buffer is written out on its own once
    /// it passes the codec's backpressure boundary.
    pub async fn feed<M: Serialize>(&mut self, message: &M) -> Result<(), FrameError> {
        let frame = self.encode(message)?;
        self.framed.feed(frame).await?;
        Ok(())
    }

    /// Writes out what [`feed`](Self::feed) buffered.
    pub async fn flush(&mut self) -> Result<(), FrameError> {
        SinkExt::<Bytes>::flush(&mut self.framed).await?;
        Ok(())
    }

    /// Receives one message; `Ok(None)` when the peer closed the connection cleanly.
    ///
    /// Cancel-safe: a partly read frame stays buffered for the next call.
    pub async fn recv<M: DeserializeOwned>(&mut self) -> Result<Option<M>, FrameError> {
        match self.framed.next().await {
            None => Ok(None),
            Some(Ok(frame)) => postcard::from_bytes(&frame)
                .map(Some)
                .map_err(FrameError::Decode),
            Some(Err(err))
                if err
                    .get_ref()
                    .is_some_and(|inner| inner.is::<LengthDelimitedCodecError>()) =>
            {
                Err(FrameError::Oversize { max: self.max_read })
            }
            Some(Err(err)) => Err(FrameError::Io(err)),
        }
    }

    /// Flushes and shuts down the write side.
    pub async fn close(&mut self) -> Result<(), FrameError> {
        SinkExt::<Bytes>::close(&mut self.framed).await?;
        Ok(())
    }

    /// The underlying stream, to write past the framing (tests of broken peers).
    pub fn get_mut(&mut self) -> &mut S {
        self.framed.get_mut()
    }
}
