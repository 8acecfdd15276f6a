//! An open transfer (`Opened`): the stream of chunks every origin (file, HTTP, S3) hands back,
//! and whether it starts at the offset asked for.

use std::fmt;
use std::pin::Pin;

use bytes::Bytes;
use futures_util::Stream;

use super::error::FetchError;

/// A stream of chunks from an origin.
pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, FetchError>> + Send>>;

/// An open transfer.
pub struct Opened {
    pub stream: ByteStream,
    /// Whether the stream starts at the requested offset; `false` means it starts at byte 0.
    pub resumed: bool,
    /// The size of the whole object when the origin says it.
    pub total: Option<u64>,
}

impl fmt::Debug for Opened {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Opened")
            .field("resumed", &self.resumed)
            .field("total", &self.total)
            .finish_non_exhaustive()
    }
}
