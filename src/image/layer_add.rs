//! Adding a layer blob to the store: one pass that copies the blob,
//! checks its digest and size, decompresses it, checks the diff_id and
//! unpacks the tar, all as the bytes go by.

use std::fs::{self, File};
use std::io::{self, BufRead, BufReader, Read, Write};
use std::path::Path;

use super::digest::{self, Digest, HashingReader};
use super::progress::Progress;
use super::spec::{self, Compression};
use super::store::{
    LayerRecord, MAX_BLOB_SIZE, Store, StoreLock, remove_dir_tree, temp_name, write_atomic,
};
use super::unpack::{self, Limits};
use super::{ImageError, Result};

/// What [`Store::add_layer`] expects of a blob; every field that is known
/// is checked.
#[derive(Debug, Clone, Default)]
pub struct LayerExpect {
    /// The blob's digest (compressed bytes).
    pub digest: Option<Digest>,
    pub size: Option<u64>,
    /// The digest of the uncompressed tar.
    pub diff_id: Option<Digest>,
    /// The media type, for the compression when the magic bytes are silent.
    pub media_type: Option<String>,
}

/// A layer now in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddedLayer {
    pub diff_id: Digest,
    /// The compressed blob as stored in blobs/.
    pub digest: Digest,
    pub size: u64,
    pub compression: Compression,
    /// False when the layer was already unpacked.
    pub unpacked: bool,
}

impl AddedLayer {
    /// The OCI media type of the stored blob.
    pub fn media_type(&self) -> &'static str {
        match self.compression {
            Compression::None => spec::MEDIA_OCI_LAYER,
            Compression::Gzip => spec::MEDIA_OCI_LAYER_GZIP,
            Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
        }
    }
}

impl Store {
    /// Put one layer blob in the store: the blob, as read, to blobs/; its
    /// tar unpacked to layers/ unless that layer is there already. The
    /// blob is checked against its digest and size while it is read, the
    /// tar against its diff_id; on any failure nothing is kept.
    pub fn add_layer(
        &self,
        lock: &StoreLock,
        blob: impl Read,
        expect: &LayerExpect,
        progress: &Progress,
    ) -> Result<AddedLayer> {
        self.require_exclusive(lock)?;
        let need_unpack = expect.diff_id.as_ref().is_none_or(|d| !self.has_layer(d));
        let limit = expect.size.unwrap_or(MAX_BLOB_SIZE);
        if limit > MAX_BLOB_SIZE {
            return Err(ImageError::new(format!(
                "declared size {limit} is more than the {MAX_BLOB_SIZE} bytes allowed for a layer"
            )));
        }
        let tmp = self.tmp_dir();
        let blob_tmp = tmp.join(temp_name("blob"));
        let layer_tmp = tmp.join(temp_name("layer"));
        let result = self.add_layer_in(
            blob,
            expect,
            progress,
            limit,
            &blob_tmp,
            need_unpack.then_some(layer_tmp.as_path()),
        );
        // Whatever was not renamed into place goes now (the next locked
        // change would remove it too).
        let _ = fs::remove_file(&blob_tmp);
        if layer_tmp.exists() {
            let _ = remove_dir_tree(&layer_tmp);
        }
        result.map(|mut added| {
            added.unpacked = need_unpack;
            added
        })
    }

    fn add_layer_in(
        &self,
        blob: impl Read,
        expect: &LayerExpect,
        progress: &Progress,
        limit: u64,
        blob_tmp: &Path,
        layer_tmp: Option<&Path>,
    ) -> Result<AddedLayer> {
        let blob_file =
            File::create(blob_tmp).map_err(|e| ImageError::io("create", blob_tmp, e))?;
        let mut outer = HashingReader::new(
            Tee {
                inner: progress.wrap(blob),
                copy: io::BufWriter::new(&blob_file),
            },
            limit,
        );
        let read = (|| -> Result<(Digest, Compression)> {
            let mut buffered = BufReader::new(&mut outer);
            let head = buffered
                .fill_buf()
                .map_err(|e| ImageError::new(format!("read: {e}")))?;
            let magic = Compression::from_magic(head);
            let by_type = expect
                .media_type
                .as_deref()
                .and_then(Compression::from_media_type);
            // The bytes decide; a media type that names another compression
            // is only believed when the bytes show none.
            let compression = match (magic, by_type) {
                (Compression::None, Some(t)) if t != Compression::None && !head.is_empty() => {
                    return Err(ImageError::new(format!(
                        "media type says {t:?} but the data is not {t:?}-compressed"
                    )));
                }
                (m, _) => m,
            };
            let decoded: Box<dyn Read + '_> = match compression {
                Compression::None => Box::new(buffered),
                Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(buffered)),
                Compression::Zstd => Box::new(
                    zstd::stream::read::Decoder::with_buffer(buffered)
                        .map_err(|e| ImageError::new(format!("zstd: {e}")))?,
                ),
            };
            let mut inner = HashingReader::new(decoded, u64::MAX);
            if let Some(dir) = layer_tmp {
                fs::create_dir(dir).map_err(|e| ImageError::io("create", dir, e))?;
                unpack::unpack(&mut inner, dir, &Limits::default())?;
            }
            let (diff_id, _) = inner
                .finish()
                .map_err(|e| ImageError::new(format!("read: {e}")))?;
            Ok((diff_id, compression))
        })();
        let (diff_id, compression) = match read {
            Ok(r) => r,
            // A blob that is not what its digest says fails in any odd way
            // (a broken stream, a bad tar): name the real cause.
            Err(e) => match (&expect.digest, finish_outer(outer)) {
                (Some(expected), Ok((actual, _))) if *expected != actual => {
                    return Err(ImageError::new(format!(
                        "blob: digest mismatch: expected {expected}, got {actual}"
                    )));
                }
                _ => return Err(e),
            },
        };
        let (digest, size) = finish_outer(outer)?;
        if let Some(expected) = &expect.digest {
            digest::verify("blob", expected, &digest)?;
        }
        if let Some(expected) = expect.size
            && expected != size
        {
            return Err(ImageError::new(format!(
                "blob {digest}: size mismatch: expected {expected} bytes, got {size}"
            )));
        }
        if let Some(expected) = &expect.diff_id {
            digest::verify(&format!("layer {digest} uncompressed"), expected, &diff_id)?;
        }
        blob_file
            .sync_all()
            .map_err(|e| ImageError::io("write", blob_tmp, e))?;
        let blob_final = self.blob_path(&digest);
        if !blob_final.exists() {
            fs::rename(blob_tmp, &blob_final)
                .map_err(|e| ImageError::io("rename", &blob_final, e))?;
        }
        if let Some(dir) = layer_tmp {
            let final_dir = self.layer_dir(&diff_id);
            if !final_dir.exists() {
                let stats = count_tree(dir);
                let record = LayerRecord {
                    diff_id: diff_id.clone(),
                    size: stats.1,
                    entries: stats.0,
                };
                let json = serde_json::to_vec_pretty(&record).unwrap_or_default();
                write_atomic(&self.tmp_dir(), &self.layer_record_path(&diff_id), &json)?;
                fs::rename(dir, &final_dir).map_err(|e| ImageError::io("rename", &final_dir, e))?;
            }
        }
        Ok(AddedLayer {
            diff_id,
            digest,
            size,
            compression,
            unpacked: true,
        })
    }
}

/// A reader that writes a copy of everything read.
struct Tee<R, W> {
    inner: R,
    copy: W,
}

impl<R: Read, W: Write> Read for Tee<R, W> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.copy.write_all(&buf[..n])?;
        Ok(n)
    }
}

fn finish_outer<R: Read, W: Write>(outer: HashingReader<Tee<R, W>>) -> Result<(Digest, u64)> {
    let (digest, size, mut tee) = outer
        .finish_into()
        .map_err(|e| ImageError::new(format!("read: {e}")))?;
    tee.copy
        .flush()
        .map_err(|e| ImageError::new(format!("write the blob: {e}")))?;
    Ok((digest, size))
}

/// (entries, bytes of regular files) of an unpacked tree.
fn count_tree(dir: &Path) -> (u64, u64) {
    let mut entries = 0;
    let mut bytes = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            entries += 1;
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) if m.is_file() => bytes += m.len(),
                _ => {}
            }
        }
    }
    (entries, bytes)
}
