//! `file:///abs/path` and plain paths: the archive is read from the local filesystem in chunks,
//! so a huge local archive streams through the same bounded pipeline as a download.

use std::io::SeekFrom;
use std::path::Path;

use futures_util::StreamExt;
use tokio::io::AsyncSeekExt;
use tokio_util::io::ReaderStream;

use super::error::FetchError;
use super::opened::Opened;

/// Read size; large enough that the per-chunk overhead of the pipeline does not show.
const CHUNK: usize = 256 * 1024;

pub(super) async fn open(url: &str, path: &Path, offset: u64) -> Result<Opened, FetchError> {
    let file_error = |source| FetchError::File {
        url: url.to_owned(),
        path: path.to_owned(),
        source,
    };
    let mut file = tokio::fs::File::open(path).await.map_err(file_error)?;
    let total = file.metadata().await.map_err(file_error)?.len();
    if offset > 0 {
        file.seek(SeekFrom::Start(offset))
            .await
            .map_err(file_error)?;
    }
    let url = url.to_owned();
    let path = path.to_owned();
    let stream = ReaderStream::with_capacity(file, CHUNK).map(move |chunk| {
        chunk.map_err(|source| FetchError::File {
            url: url.clone(),
            path: path.clone(),
            source,
        })
    });
    Ok(Opened {
        stream: Box::pin(stream),
        resumed: true,
        total: Some(total),
    })
}
