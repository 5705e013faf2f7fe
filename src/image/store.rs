//! The image store on disk (docs/formats.md, "The image store"): blobs,
//! unpacked layers keyed by diff_id, image records, and the lock that
//! serialises changes. Every change happens under an exclusive flock on
//! `lock`, builds in `tmp/` and is renamed into place, so a failed or
//! interrupted change leaves the store as it was.

use std::collections::BTreeSet;
use std::ffi::CString;
use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::fcntl::{Flock, FlockArg};
use serde::{Deserialize, Serialize};

use super::digest::{self, Digest};
use super::spec::{ImageConfig, Manifest};
use super::unpack;
use super::{ImageError, Result};

/// How long a change waits for the lock before giving up, unless
/// `LAYERFS_LOCK_TIMEOUT` (seconds) says otherwise.
const DEFAULT_LOCK_TIMEOUT: Duration = Duration::from_secs(120);
/// Manifests, indexes and configs are small; anything bigger is refused.
pub const MAX_JSON_SIZE: u64 = 16 << 20;
/// A layer blob larger than this is refused before it is read.
pub const MAX_BLOB_SIZE: u64 = 256 << 30;

/// An opened store directory.
#[derive(Debug, Clone)]
pub struct Store {
    root: PathBuf,
    /// Whether a path is a live layerfs mount (the CLI knows how to tell;
    /// without it a mount record counts as live while its pid is).
    pub(super) mount_check: Option<fn(&Path) -> bool>,
}

/// A held lock on the store: exclusive for changes, shared for reads.
/// Released when dropped.
pub struct StoreLock {
    _flock: Flock<File>,
    exclusive: bool,
}

impl StoreLock {
    pub fn is_exclusive(&self) -> bool {
        self.exclusive
    }
}

/// images/<config-hex>.json
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageRecord {
    /// `sha256:<config hex>`.
    pub id: Digest,
    pub manifest: Digest,
    pub config: Digest,
    #[serde(default)]
    pub names: Vec<String>,
    #[serde(default)]
    pub created: String,
}

/// layers/sha256/<diffid-hex>.json
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    pub diff_id: Digest,
    /// Bytes of the regular files unpacked.
    pub size: u64,
    pub entries: u64,
}

/// An image resolved from a reference, with everything needed to mount,
/// show or export it.
#[derive(Debug, Clone)]
pub struct Image {
    pub record: ImageRecord,
    pub manifest: Manifest,
    pub manifest_bytes: Vec<u8>,
    pub config: ImageConfig,
    pub config_bytes: Vec<u8>,
    /// The unpacked layer directories, bottom first (the config's
    /// rootfs.diff_ids order); reverse for a lowerdir.
    pub layer_dirs: Vec<PathBuf>,
}

/// A unique name for something being built in tmp/.
pub(super) fn temp_name(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}-{}-{n}-{nanos}", std::process::id())
}

/// Now, RFC 3339 in UTC.
pub fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Write `bytes` to `path` atomically (temp file in `tmp`, fsync, rename).
pub(super) fn write_atomic(tmp: &Path, path: &Path, bytes: &[u8]) -> Result<()> {
    let t = tmp.join(temp_name("write"));
    let res = (|| {
        let mut f = File::create(&t)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&t, path)
    })();
    if let Err(e) = res {
        let _ = fs::remove_file(&t);
        return Err(ImageError::io("write", path, e));
    }
    Ok(())
}

/// `name[:tag]` with `:latest` added when there is no tag.
pub fn normalize_name(name: &str) -> Result<String> {
    let bad = name.is_empty()
        || name.len() > 255
        || name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || c == '\\' || c == '"');
    if bad || name.starts_with(':') || name.ends_with(':') {
        return Err(ImageError::new(format!("invalid image name {name:?}")));
    }
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || last.contains('@') {
        Ok(name.to_string())
    } else {
        Ok(format!("{name}:latest"))
    }
}

impl Image {
    /// The lowerdir of a mount: the layer directories top first. A layer
    /// that appears more than once (images repeat the empty layer) is kept
    /// only where it is topmost: below that it adds nothing.
    pub fn lowerdirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = Vec::new();
        for dir in self.layer_dirs.iter().rev() {
            if !out.contains(dir) {
                out.push(dir.clone());
            }
        }
        out
    }
}

impl Store {
    /// The store used when none is given: `LAYERFS_STORE`, else
    /// /var/lib/layerfs as root, else `$XDG_DATA_HOME/layerfs`
    /// (~/.local/share/layerfs).
    pub fn default_dir() -> PathBuf {
        if let Some(dir) = std::env::var_os("LAYERFS_STORE").filter(|d| !d.is_empty()) {
            return PathBuf::from(dir);
        }
        if nix::unistd::geteuid().is_root() {
            return PathBuf::from("/var/lib/layerfs");
        }
        if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
            return PathBuf::from(d).join("layerfs");
        }
        let home = std::env::var_os("HOME").unwrap_or_else(|| "/".into());
        PathBuf::from(home).join(".local/share/layerfs")
    }

    /// `--store DIR` when given, else [`Store::default_dir`].
    pub fn resolve_dir(explicit: Option<&Path>) -> PathBuf {
        explicit.map_or_else(Store::default_dir, Path::to_path_buf)
    }

    /// Open (creating its directories if needed) the store at `dir`.
    pub fn open(dir: &Path) -> Result<Store> {
        for sub in [
            "blobs/sha256",
            "layers/sha256",
            "images",
            "containers",
            "mounts",
            "tmp",
        ] {
            let p = dir.join(sub);
            fs::create_dir_all(&p)
                .map_err(|e| ImageError::io("create the store directory", &p, e))?;
        }
        let root = fs::canonicalize(dir).map_err(|e| ImageError::io("open the store", dir, e))?;
        Ok(Store {
            root,
            mount_check: None,
        })
    }

    /// Use `check` to tell whether a recorded mount point is still a live
    /// layerfs mount.
    pub fn with_mount_check(mut self, check: fn(&Path) -> bool) -> Store {
        self.mount_check = Some(check);
        self
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn tmp_dir(&self) -> PathBuf {
        self.root.join("tmp")
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    pub(super) fn layer_record_path(&self, diff_id: &Digest) -> PathBuf {
        self.root
            .join(format!("layers/sha256/{}.json", diff_id.hex()))
    }

    fn image_record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    pub fn has_layer(&self, diff_id: &Digest) -> bool {
        self.layer_dir(diff_id).is_dir()
    }

    pub fn has_blob(&self, digest: &Digest) -> bool {
        self.blob_path(digest).is_file()
    }

    /// Take the lock: exclusive for a change, shared for a consistent read.
    /// Waits up to `LAYERFS_LOCK_TIMEOUT` seconds (default 120). An
    /// exclusive lock first clears what failed changes left in tmp/ and
    /// the records of mounts that are gone.
    pub fn lock(&self, exclusive: bool) -> Result<StoreLock> {
        let path = self.root.join("lock");
        let timeout = std::env::var("LAYERFS_LOCK_TIMEOUT")
            .ok()
            .and_then(|s| s.parse::<f64>().ok())
            .map_or(DEFAULT_LOCK_TIMEOUT, Duration::from_secs_f64);
        let deadline = Instant::now() + timeout;
        let arg = if exclusive {
            FlockArg::LockExclusiveNonblock
        } else {
            FlockArg::LockSharedNonblock
        };
        let mut file = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(|e| ImageError::io("open", &path, e))?;
        let flock = loop {
            match Flock::lock(file, arg) {
                Ok(l) => break l,
                Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < deadline => {
                    file = f;
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err((_, nix::errno::Errno::EWOULDBLOCK)) => {
                    return Err(ImageError::new(format!(
                        "store {}: locked by another layerfs command for more than {} s; try again later",
                        self.root.display(),
                        timeout.as_secs()
                    )));
                }
                Err((_, e)) => return Err(ImageError::io("lock", &path, e.into())),
            }
        };
        let lock = StoreLock {
            _flock: flock,
            exclusive,
        };
        if exclusive {
            self.clean_tmp();
            self.forget_dead_mounts(&lock);
        }
        Ok(lock)
    }

    fn clean_tmp(&self) {
        let tmp = self.tmp_dir();
        let Ok(rd) = fs::read_dir(&tmp) else {
            return;
        };
        for entry in rd.flatten() {
            let p = entry.path();
            let res = match entry.file_type() {
                Ok(t) if t.is_dir() => remove_dir_tree(&p),
                _ => fs::remove_file(&p),
            };
            if let Err(e) = res {
                tracing::warn!(path = %p.display(), error = %e, "cannot clean the store's tmp/");
            }
        }
    }

    pub(super) fn require_exclusive(&self, lock: &StoreLock) -> Result<()> {
        if lock.exclusive {
            Ok(())
        } else {
            Err(ImageError::new(format!(
                "store {}: a change needs the exclusive lock",
                self.root.display()
            )))
        }
    }

    /// Store a blob given in memory (a manifest or config), if absent.
    pub fn add_blob(&self, lock: &StoreLock, bytes: &[u8]) -> Result<Digest> {
        self.require_exclusive(lock)?;
        let digest = Digest::of(bytes);
        let path = self.blob_path(&digest);
        if !path.exists() {
            write_atomic(&self.tmp_dir(), &path, bytes)?;
        }
        Ok(digest)
    }

    /// Read a stored blob whole, checking its digest.
    pub fn read_blob(&self, digest: &Digest) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let bytes = fs::read(&path).map_err(|e| ImageError::io("read", &path, e))?;
        digest::verify(
            &format!("blob {}", path.display()),
            digest,
            &Digest::of(&bytes),
        )?;
        Ok(bytes)
    }

    /// Record an image from its config and manifest (stored as given; the
    /// manifest must name this config, and every layer must be in the
    /// store). `names` move to this image from any other that had them.
    pub fn add_image(
        &self,
        lock: &StoreLock,
        config_bytes: &[u8],
        manifest_bytes: &[u8],
        names: &[String],
    ) -> Result<ImageRecord> {
        self.require_exclusive(lock)?;
        let config: ImageConfig = serde_json::from_slice(config_bytes)
            .map_err(|e| ImageError::new(format!("image config: {e}")))?;
        let manifest: Manifest = serde_json::from_slice(manifest_bytes)
            .map_err(|e| ImageError::new(format!("image manifest: {e}")))?;
        let id = Digest::of(config_bytes);
        digest::verify("the manifest's config", &manifest.config.digest, &id)?;
        if manifest.layers.len() != config.rootfs.diff_ids.len() {
            return Err(ImageError::new(format!(
                "image {id}: the manifest lists {} layers, the config {}",
                manifest.layers.len(),
                config.rootfs.diff_ids.len()
            )));
        }
        for diff_id in &config.rootfs.diff_ids {
            if !self.has_layer(diff_id) {
                return Err(ImageError::new(format!(
                    "image {id}: layer {diff_id} is not in the store"
                )));
            }
        }
        let names = names
            .iter()
            .map(|n| normalize_name(n))
            .collect::<Result<BTreeSet<_>>>()?;
        self.add_blob(lock, config_bytes)?;
        let manifest_digest = self.add_blob(lock, manifest_bytes)?;
        // Names are unique: take them from other images.
        for mut other in self.image_records()? {
            if other.id != id && other.names.iter().any(|n| names.contains(n)) {
                other.names.retain(|n| !names.contains(n));
                self.write_image_record(&other)?;
            }
        }
        let mut record = match self.image_record(&id)? {
            Some(r) => r,
            None => ImageRecord {
                id: id.clone(),
                manifest: manifest_digest.clone(),
                config: id.clone(),
                names: Vec::new(),
                created: now_rfc3339(),
            },
        };
        record.manifest = manifest_digest;
        let mut all: BTreeSet<String> = record.names.iter().cloned().collect();
        all.extend(names);
        record.names = all.into_iter().collect();
        self.write_image_record(&record)?;
        Ok(record)
    }

    pub(super) fn write_image_record(&self, record: &ImageRecord) -> Result<()> {
        let json = serde_json::to_vec_pretty(record).unwrap_or_default();
        write_atomic(&self.tmp_dir(), &self.image_record_path(&record.id), &json)
    }

    fn image_record(&self, id: &Digest) -> Result<Option<ImageRecord>> {
        let path = self.image_record_path(id);
        match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| ImageError::new(format!("{}: {e}", path.display()))),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ImageError::io("read", &path, e)),
        }
    }

    /// Every image record, sorted by id.
    pub fn image_records(&self) -> Result<Vec<ImageRecord>> {
        let dir = self.root.join("images");
        let mut out = Vec::new();
        let rd = fs::read_dir(&dir).map_err(|e| ImageError::io("read", &dir, e))?;
        for entry in rd {
            let entry = entry.map_err(|e| ImageError::io("read", &dir, e))?;
            let name = entry.file_name();
            let Some(hex) = name.to_str().and_then(|n| n.strip_suffix(".json")) else {
                continue;
            };
            let Ok(id) = Digest::parse(&format!("sha256:{hex}")) else {
                continue;
            };
            if let Some(r) = self.image_record(&id)? {
                out.push(r);
            }
        }
        out.sort_by(|a, b| a.id.cmp(&b.id));
        Ok(out)
    }

    /// The image record a reference names: `name[:tag]`, a full id
    /// (`sha256:<hex>`), or a unique id prefix of at least 4 hex digits.
    pub fn find_image(&self, reference: &str) -> Result<ImageRecord> {
        let records = self.image_records()?;
        if let Ok(name) = normalize_name(reference)
            && let Some(r) = records.iter().find(|r| r.names.contains(&name))
        {
            return Ok(r.clone());
        }
        let hex = reference.strip_prefix("sha256:").unwrap_or(reference);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hex = hex.to_ascii_lowercase();
            let found: Vec<&ImageRecord> = records
                .iter()
                .filter(|r| r.id.hex().starts_with(&hex))
                .collect();
            match found.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => {
                    return Err(ImageError::new(format!(
                        "image {reference}: the id prefix matches {} images",
                        found.len()
                    )));
                }
            }
        }
        Err(ImageError::new(format!(
            "image {reference}: not found in the store"
        )))
    }

    /// Everything about the image a reference names (see [`Store::find_image`]).
    pub fn resolve_image(&self, reference: &str) -> Result<Image> {
        let record = self.find_image(reference)?;
        self.load_image(record)
    }

    pub fn load_image(&self, record: ImageRecord) -> Result<Image> {
        let manifest_bytes = self.read_blob(&record.manifest)?;
        let config_bytes = self.read_blob(&record.config)?;
        let bad = |what: &str, e: serde_json::Error| {
            ImageError::new(format!("image {}: {what}: {e}", record.id))
        };
        let manifest: Manifest =
            serde_json::from_slice(&manifest_bytes).map_err(|e| bad("manifest", e))?;
        let config: ImageConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| bad("config", e))?;
        let mut layer_dirs = Vec::new();
        for d in &config.rootfs.diff_ids {
            let dir = self.layer_dir(d);
            if !dir.is_dir() {
                return Err(ImageError::new(format!(
                    "image {}: layer {d} is missing from the store",
                    record.id
                )));
            }
            layer_dirs.push(dir);
        }
        Ok(Image {
            record,
            manifest,
            manifest_bytes,
            config,
            config_bytes,
            layer_dirs,
        })
    }

    /// The record of an unpacked layer.
    pub fn layer_record(&self, diff_id: &Digest) -> Result<LayerRecord> {
        let path = self.layer_record_path(diff_id);
        let bytes = fs::read(&path).map_err(|e| ImageError::io("read", &path, e))?;
        serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::new(format!("{}: {e}", path.display())))
    }

    /// Remove an image: refused while it is mounted, and while a container
    /// uses it unless `force`. Its layers and blobs go when no other image
    /// uses them. Returns the removed record.
    pub fn remove_image(
        &self,
        lock: &StoreLock,
        reference: &str,
        force: bool,
    ) -> Result<ImageRecord> {
        self.require_exclusive(lock)?;
        let record = self.find_image(reference)?;
        if let Some(m) = self
            .live_mounts()?
            .into_iter()
            .find(|m| m.image == record.id)
        {
            return Err(ImageError::new(format!(
                "image {reference}: mounted at {} (pid {}); unmount it first",
                m.mountpoint.display(),
                m.pid
            )));
        }
        if !force
            && let Some(c) = self
                .container_records()?
                .into_iter()
                .find(|c| c.image == record.id)
        {
            return Err(ImageError::new(format!(
                "image {reference}: used by container {}; remove it first or use --force",
                c.name
            )));
        }
        let image = self.load_image(record.clone()).ok();
        fs::remove_file(self.image_record_path(&record.id))
            .map_err(|e| ImageError::io("remove", &self.image_record_path(&record.id), e))?;
        self.collect_garbage(lock, image.as_ref())?;
        Ok(record)
    }

    /// Remove what no image uses any more: of `removed`'s layers and blobs,
    /// those no remaining image references.
    fn collect_garbage(&self, _lock: &StoreLock, removed: Option<&Image>) -> Result<()> {
        let Some(removed) = removed else {
            return Ok(());
        };
        let mut used_layers = BTreeSet::new();
        let mut used_blobs = BTreeSet::new();
        for r in self.image_records()? {
            let img = self.load_image(r.clone())?;
            used_layers.extend(img.config.rootfs.diff_ids.iter().cloned());
            used_blobs.insert(r.manifest.clone());
            used_blobs.insert(r.config.clone());
            used_blobs.extend(img.manifest.layers.iter().map(|l| l.digest.clone()));
        }
        for d in &removed.config.rootfs.diff_ids {
            if !used_layers.contains(d) {
                // Renamed into tmp/ first, so a crash halfway never leaves a
                // half-removed layer under its real name.
                let doomed = self.tmp_dir().join(temp_name("rm"));
                let dir = self.layer_dir(d);
                if fs::rename(&dir, &doomed).is_ok() {
                    remove_dir_tree(&doomed).map_err(|e| ImageError::io("remove", &dir, e))?;
                }
                let _ = fs::remove_file(self.layer_record_path(d));
            }
        }
        let mut blobs = vec![
            removed.record.manifest.clone(),
            removed.record.config.clone(),
        ];
        blobs.extend(removed.manifest.layers.iter().map(|l| l.digest.clone()));
        for b in blobs {
            if !used_blobs.contains(&b) {
                let _ = fs::remove_file(self.blob_path(&b));
            }
        }
        Ok(())
    }
}

/// Remove a directory tree without following symlinks.
pub(super) fn remove_dir_tree(path: &Path) -> io::Result<()> {
    let parent = path.parent().unwrap_or(Path::new("/"));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::from_raw_os_error(libc::EINVAL))?;
    let pfd = crate::layers::sys::open_dir_path(parent)?;
    let cname = CString::new(std::os::unix::ffi::OsStrExt::as_bytes(name))
        .map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    unpack::remove_tree(pfd.as_fd(), &cname)
}
