//! Large request bodies — bundle uploads, validation datasets, telemetry files — are streamed to
//! disk as they arrive, never held in memory.
//!
//! [`Uploads::receive`] writes the body, a megabyte at a time, to a file with no name under
//! `<data_dir>/uploads/` (`O_TMPFILE` where the filesystem has it): the route's limit is enforced on
//! the bytes as they come (a chunked body with no declared length included, 413), a full disk
//! answers 507 naming the directory, and a dropped connection or a crash leaves nothing behind —
//! the kernel frees a nameless file when its last handle closes. The handler then reads the body
//! through a read-only memory map ([`Spooled::bytes`]): file pages the kernel may drop and read
//! again, not heap. The work done with an upload (parsing, loading a model to check it) runs one
//! upload at a time ([`Uploads::work`]), so what uploads cost in memory is one bundle's work,
//! however many clients are sending.

use std::io::{Read, Seek, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use axum::body::Body;
use axum::http::StatusCode;

use crate::http::error::ApiError;

/// Bytes gathered before one write to the spool file.
const CHUNK: usize = 1 << 20;

/// Where large bodies are spooled, and the turn each upload's work waits for.
#[derive(Debug)]
pub struct Uploads {
    dir: PathBuf,
    work: Arc<tokio::sync::Semaphore>,
}

/// A request body on disk.
#[derive(Debug)]
pub struct Spooled {
    file: std::fs::File,
    len: u64,
}

impl Spooled {
    /// How many bytes the body holds.
    pub fn len(&self) -> u64 {
        self.len
    }

    /// Whether the body was empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The body from its first byte, buffered (blocking reads: call off the async executor).
    pub fn reader(&mut self) -> std::io::Result<std::io::BufReader<&std::fs::File>> {
        self.file.rewind()?;
        Ok(std::io::BufReader::with_capacity(1 << 16, &self.file))
    }

    /// The whole body in memory, for work that needs all of it at once (blocking).
    pub fn read_all(&mut self) -> std::io::Result<Vec<u8>> {
        let mut out = Vec::with_capacity(usize::try_from(self.len).unwrap_or(0));
        self.reader()?.read_to_end(&mut out)?;
        Ok(out)
    }
}

impl Uploads {
    /// The spool directory `<data_dir>/uploads`, created owner-only if missing.
    pub fn new(data_dir: &Path) -> std::io::Result<Uploads> {
        let dir = data_dir.join("uploads");
        std::fs::create_dir_all(&dir)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
        }
        Ok(Uploads { dir, work: Arc::new(tokio::sync::Semaphore::new(1)) })
    }

    /// Streams `body` to a nameless spool file, refusing it once it passes `limit` bytes.
    pub async fn receive(&self, body: Body, limit: usize) -> Result<Spooled, ApiError> {
        let dir = self.dir.clone();
        let file = blocking(move || tempfile::tempfile_in(&dir)).await.map_err(|e| self.io(e, 0))?;
        let mut body = body.into_data_stream();
        let mut writer = Some(file);
        let (mut pending, mut received) = (Vec::with_capacity(CHUNK), 0usize);
        loop {
            let next = futures_util::StreamExt::next(&mut body).await;
            let last = next.is_none();
            if let Some(data) = next {
                let data = data.map_err(|e| {
                    ApiError::bad_request(format!("the request body broke off after {received} bytes: {e}"))
                })?;
                received += data.len();
                if received > limit {
                    return Err(ApiError(
                        StatusCode::PAYLOAD_TOO_LARGE,
                        format!("request body is larger than this route's limit of {limit} bytes"),
                    ));
                }
                pending.extend_from_slice(&data);
            }
            if pending.len() >= CHUNK || (last && !pending.is_empty()) {
                let Some(mut file) = writer.take() else { break };
                let chunk = std::mem::take(&mut pending);
                let (file, chunk) = blocking(move || file.write_all(&chunk).map(|()| (file, chunk)))
                    .await
                    .map_err(|e| self.io(e, received))?;
                writer = Some(file);
                pending = chunk;
                pending.clear();
            }
            if last {
                break;
            }
        }
        let file = writer.ok_or_else(|| ApiError::internal("the spool file was lost between writes"))?;
        Ok(Spooled { file, len: received as u64 })
    }

    /// Waits for this upload's turn to do its work (parse, verify, load); the turn ends when the
    /// permit is dropped.
    pub async fn work(&self) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        Arc::clone(&self.work).acquire_owned().await.map_err(ApiError::internal)
    }

    fn io(&self, e: std::io::Error, received: usize) -> ApiError {
        if e.kind() == std::io::ErrorKind::StorageFull {
            return ApiError(
                StatusCode::INSUFFICIENT_STORAGE,
                format!(
                    "no space left to receive the upload in {} ({received} bytes received): free space there \
                     or send a smaller body",
                    self.dir.display()
                ),
            );
        }
        ApiError::internal(format!("spooling the upload in {}: {e}", self.dir.display()))
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| Err(std::io::Error::other(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunked(parts: usize, each: usize) -> Body {
        let chunks = (0..parts).map(move |i| Ok::<_, std::io::Error>(vec![i as u8; each]));
        Body::from_stream(futures_util::stream::iter(chunks))
    }

    #[tokio::test]
    async fn a_streamed_body_reads_back_whole_and_leaves_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::new(dir.path()).unwrap();
        let mut spooled = uploads.receive(chunked(5, 700_000), 10_000_000).await.unwrap();
        assert_eq!(spooled.len(), 3_500_000);
        assert_eq!(
            std::fs::read_dir(dir.path().join("uploads")).unwrap().count(),
            0,
            "the spool file has no name"
        );
        let bytes = spooled.read_all().unwrap();
        assert_eq!(bytes.len(), 3_500_000);
        assert!(bytes[..700_000].iter().all(|b| *b == 0) && bytes[2_800_000..].iter().all(|b| *b == 4));
        assert_eq!(spooled.read_all().unwrap(), bytes, "each read starts at the first byte");
        assert!(uploads.receive(Body::empty(), 10).await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_body_past_the_limit_is_refused_while_it_streams() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::new(dir.path()).unwrap();
        let refused = uploads.receive(chunked(4, 1_000), 3_500).await.unwrap_err();
        assert_eq!(refused.0, StatusCode::PAYLOAD_TOO_LARGE);
        assert!(refused.1.contains("limit of 3500 bytes"), "{}", refused.1);
        assert!(uploads.receive(chunked(4, 1_000), 4_000).await.is_ok(), "exactly the limit is allowed");
    }

    #[tokio::test]
    async fn a_body_that_breaks_off_names_how_far_it_came() {
        let dir = tempfile::tempdir().unwrap();
        let uploads = Uploads::new(dir.path()).unwrap();
        let parts = vec![Ok(vec![1u8; 10]), Err(std::io::Error::other("connection reset"))];
        let refused =
            uploads.receive(Body::from_stream(futures_util::stream::iter(parts)), 100).await.unwrap_err();
        assert_eq!(refused.0, StatusCode::BAD_REQUEST);
        assert!(
            refused.1.contains("after 10 bytes") && refused.1.contains("connection reset"),
            "{}",
            refused.1
        );
    }
}
