//! [`AbortOnDrop`]: a multipart upload that never outlives its writer half-done. Shared by the
//! Delta sink's big data files and the table copies (replication, backups, restores).
//!
//! Invariant kept here: an upload is completed or aborted — explicitly (awaited) on an error,
//! or in the background when dropped part-way (a cancelled copy, a task that panicked).

use object_store::path::Path;
use object_store::PutPayload;

/// A multipart upload that is aborted unless completed: on an error (explicitly, awaited) and
/// when dropped part-way (a cancelled copy: the abort is spawned on the runtime). S3 keeps the
/// parts of an upload neither completed nor aborted, invisible but billed, until a lifecycle
/// rule removes them; nothing ever appears under the final name before completion.
pub struct AbortOnDrop {
    upload: Option<Box<dyn object_store::MultipartUpload>>,
    to: String,
}

impl AbortOnDrop {
    /// Wraps `upload` of the object at `to` (named in the warnings).
    pub fn new(upload: Box<dyn object_store::MultipartUpload>, to: &Path) -> Self {
        Self {
            upload: Some(upload),
            to: to.to_string(),
        }
    }

    /// Sends one part (parts complete in the order they were sent).
    pub fn put_part(&mut self, data: PutPayload) -> object_store::UploadPart {
        match self.upload.as_mut() {
            Some(u) => u.put_part(data),
            None => Box::pin(async {
                Err(object_store::Error::Generic {
                    store: "multipart",
                    source: "the upload is already finished".into(),
                })
            }),
        }
    }

    /// Completes the upload; a failed completion is aborted.
    pub async fn complete(mut self) -> object_store::Result<object_store::PutResult> {
        let Some(mut upload) = self.upload.take() else {
            return Err(object_store::Error::Generic {
                store: "multipart",
                source: "the upload is already finished".into(),
            });
        };
        match upload.complete().await {
            Ok(r) => Ok(r),
            Err(e) => {
                if let Err(abort) = upload.abort().await {
                    tracing::warn!(file = %self.to, error = %abort, "could not abort a failed multipart upload");
                }
                Err(e)
            }
        }
    }

    /// Aborts the upload (best effort: a failure is logged).
    pub async fn abort(mut self) {
        if let Some(mut upload) = self.upload.take() {
            if let Err(e) = upload.abort().await {
                tracing::warn!(file = %self.to, error = %e, "could not abort a failed multipart upload");
            }
        }
    }
}

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        let Some(mut upload) = self.upload.take() else {
            return;
        };
        let to = std::mem::take(&mut self.to);
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                if let Err(e) = upload.abort().await {
                    tracing::warn!(file = %to, error = %e, "could not abort a cancelled multipart upload");
                }
            });
        }
    }
}
