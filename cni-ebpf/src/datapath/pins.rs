//! bpffs, the pin layout, and loading the object once per node.

use std::path::{Path, PathBuf};

use aya::{
    programs::{CgroupSockAddr, SchedClassifier},
    EbpfLoader,
};
use cni_ebpf_common::{map, prog, Fnv1a, PIN_ABI_VERSION};

/// The eBPF object built by build.rs from `cni-ebpf-bpf`.
static EMBEDDED: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/cni-ebpf-bpf.o"));

/// Marker directory under `progs/<hash>/`: this build's programs are pinned
/// and every recorded attachment has been brought onto them (see
/// [`Datapath::open_or_load`]).
const READY: &str = "ready";

/// The object this process loads.
fn object() -> &'static [u8] {
    // Test builds only (debug assertions on): a file whose object replaces
    // the embedded one, so the live-upgrade test can run "a build whose eBPF
    // object differs" without building a second copy of the whole binary.
    // Release builds never read it.
    #[cfg(debug_assertions)]
    {
        const OBJECT_OVERRIDE_ENV: &str = "CNI_EBPF_TEST_OBJECT";
        static OVERRIDE: std::sync::OnceLock<Option<Vec<u8>>> = std::sync::OnceLock::new();
        let o = OVERRIDE.get_or_init(|| {
            std::env::var_os(OBJECT_OVERRIDE_ENV).map(|p| {
                std::fs::read(&p).unwrap_or_else(|e| {
                    panic!("{OBJECT_OVERRIDE_ENV}={}: {e}", p.to_string_lossy())
                })
            })
        });
        if let Some(o) = o {
            return o;
        }
    }
    EMBEDDED
}

/// bpffs magic (`BPF_FS_MAGIC` in linux/magic.h).
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

/// Errors of the eBPF side.
#[derive(Debug, thiserror::Error)]
pub enum BpfError {
    /// bpffs could not be found or mounted at the pin path.
    #[error("bpffs at {path}")]
    Bpffs {
        /// Pin root.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Filesystem work under the pin root or state dir failed.
    #[error("{what} {path}")]
    Io {
        /// What was being done.
        what: &'static str,
        /// Path.
        path: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Loading the object failed (verifier, kernel support).
    #[error("loading the eBPF object")]
    Load(#[source] Box<aya::EbpfError>),
    /// A program operation failed.
    #[error("program {name}: {what}")]
    Program {
        /// Program or pin.
        name: String,
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: aya::programs::ProgramError,
    },
    /// A map operation failed.
    #[error("map {name}: {what}")]
    Map {
        /// Map.
        name: &'static str,
        /// What was being done.
        what: String,
        /// Cause.
        #[source]
        source: aya::maps::MapError,
    },
    /// A link operation failed.
    #[error("link {name}: {what}")]
    Link {
        /// Pin path.
        name: String,
        /// What was being done.
        what: &'static str,
        /// Cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

impl BpfError {
    /// A `map_err` adapter for a program operation on `name`.
    pub(super) fn program(
        name: impl Into<String>,
        what: &'static str,
    ) -> impl FnOnce(aya::programs::ProgramError) -> Self {
        let name = name.into();
        move |source| Self::Program { name, what, source }
    }
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> BpfError + 'a {
    move |source| BpfError::Io {
        what,
        path: path.display().to_string(),
        source,
    }
}

/// Short hex hash of the embedded object: programs of different builds live
/// side by side.
pub fn object_hash() -> String {
    let obj = object();
    if std::ptr::eq(obj, EMBEDDED) {
        // Computed by build.rs with the same hash.
        return env!("CNI_EBPF_OBJECT_HASH").to_string();
    }
    let mut h = Fnv1a::new();
    h.write(obj);
    format!("{:016x}", h.finish())
}

/// Handle on the node's pinned data path.
#[derive(Debug, Clone)]
pub struct Datapath {
    /// `<pin root>/v<ABI>`.
    pub(crate) dir: PathBuf,
    /// `<dir>/progs/<object hash>`.
    pub(crate) progs: PathBuf,
}

impl Datapath {
    /// The layout under `pin_root`, without touching anything.
    pub fn layout(pin_root: &Path) -> Self {
        let dir = pin_root.join(format!("v{PIN_ABI_VERSION}"));
        let progs = dir.join("progs").join(object_hash());
        Self { dir, progs }
    }

    /// Path of a pinned map.
    pub fn map_path(&self, name: &str) -> PathBuf {
        self.dir.join("maps").join(name)
    }

    /// Path of a pinned program of this build.
    pub fn prog_path(&self, name: &str) -> PathBuf {
        self.progs.join(name)
    }

    /// Opens a pinned map as its typed aya view (`T` checks the map type and
    /// the key/value sizes against the pin).
    pub(super) fn map<T>(&self, name: &'static str) -> Result<T, BpfError>
    where
        T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
    {
        let path = self.map_path(name);
        let err = |what: String| move |source| BpfError::Map { name, what, source };
        let data = aya::maps::MapData::from_pin(&path)
            .map_err(err(format!("open pin {}", path.display())))?;
        let map = aya::maps::Map::from_map_data(data).map_err(err("map type".into()))?;
        T::try_from(map).map_err(err("key/value layout".into()))
    }

    /// Directory of pinned links.
    pub fn links_dir(&self) -> PathBuf {
        self.dir.join("links")
    }

    /// True when this build's programs and every map are pinned.
    pub fn is_loaded(&self) -> bool {
        self.missing().is_empty()
    }

    /// The pins of this build that are not there (maps by name, programs as
    /// `progs/<hash>/<name>`), for STATUS and CHECK messages.
    pub fn missing(&self) -> Vec<String> {
        let maps = map::ALL
            .iter()
            .filter(|m| !self.map_path(m).exists())
            .map(|m| format!("maps/{m}"));
        let progs = prog::TC
            .iter()
            .chain(prog::SOCK.iter())
            .filter(|p| !self.prog_path(p).exists())
            .map(|p| format!("progs/{}/{p}", object_hash()));
        maps.chain(progs).collect()
    }

    /// True when no map pin is there at all (bpffs unmounted, node rebooted,
    /// pins removed), as opposed to this build's programs alone missing (an
    /// upgrade).
    pub fn maps_lost(&self) -> bool {
        map::ALL.iter().all(|m| !self.map_path(m).exists())
    }

    /// True when this build is loaded and the recorded attachments were
    /// brought onto it.
    pub fn is_ready(&self) -> bool {
        self.progs.join(READY).is_dir() && self.is_loaded()
    }

    /// Opens the pinned data path. When this build is not ready (first use
    /// on the node, pins lost, a new object after an upgrade, a pinned map
    /// whose layout differs from this object's), it checks the pinned maps
    /// against the object (re-creating incompatible ones), loads and pins
    /// this build's programs, and calls `on_load`, which brings every
    /// recorded attachment and the node-wide hooks onto them and refills the
    /// maps; only then is the build marked ready. Concurrent callers
    /// serialise on a lock file in `state_dir` (bpffs holds no regular
    /// files): only the first pays for the verifier, and none proceeds
    /// before the repair is done (a new pod must not take a hostPort that an
    /// old pod's record still holds). `nat_entries` sizes the `nat` map when
    /// this call creates it; a pinned map keeps its size.
    pub fn open_or_load(
        pin_root: &Path,
        state_dir: &Path,
        nat_entries: u32,
        on_load: &mut dyn FnMut(&Self, &LoadReport),
    ) -> Result<Self, BpfError> {
        let dp = Self::layout(pin_root);
        if dp.is_ready() {
            return Ok(dp);
        }
        crate::private::create_dir(state_dir).map_err(io("create state dir", state_dir))?;
        // Not `bpf.lock`: `on_load` attaches uplinks and socket hooks, which
        // take that one.
        let lock_path = state_dir.join("load.lock");
        let _lock = crate::lockfile::lock(&lock_path, true).map_err(io("lock", &lock_path))?;
        // Under the lock: concurrent first ADDs must not each mount a bpffs on
        // top of the other's (later ADDs would then see a different set of maps).
        ensure_bpffs(pin_root)?;
        if dp.is_ready() {
            return Ok(dp);
        }
        let report = LoadReport {
            maps_lost: dp.maps_lost(),
            migrated: dp.migrate_maps()?,
        };
        if !report.migrated.is_empty() || !dp.is_loaded() {
            dp.load(nat_entries)?;
        }
        on_load(&dp, &report);
        crate::private::create_dir(&dp.progs.join(READY))
            .map_err(io("mark ready", &dp.progs.join(READY)))?;
        Ok(dp)
    }

    /// Re-creates every pinned map whose type, key size or value size
    /// differs from this object's definition: the pin is removed (programs
    /// still attached to the old map keep it alive until they are replaced)
    /// and the load creates a new one, which the repair refills from the
    /// state records and the node's settings. Such a map is never reused:
    /// aya would reuse any map found at the pin path, and the programs would
    /// read its entries with the wrong layout. Returns what was re-created.
    fn migrate_maps(&self) -> Result<Vec<MapMigration>, BpfError> {
        let obj = aya_obj::Object::parse(object()).map_err(|e| BpfError::Link {
            name: "eBPF object".into(),
            what: "parse",
            source: Box::new(e),
        })?;
        let mut out = Vec::new();
        for name in map::ALL {
            let path = self.map_path(name);
            let Ok(info) = aya::maps::MapInfo::from_pin(&path) else {
                continue;
            };
            let Some(def) = obj.maps.get(name) else {
                continue;
            };
            // The NAT map's size is a setting (natMapEntries): a pinned one
            // keeps its size. Any other size change is a layout change (the
            // counters array grows with each new counter).
            let sized = |n: u32| {
                if name == map::NAT
                    || name == map::NAT_IN
                    || name == map::NAT_EST
                    || name == map::NAT_SHARE
                {
                    0
                } else {
                    n
                }
            };
            let have = (
                info.map_type().map(|t| t as u32).unwrap_or(u32::MAX),
                info.key_size(),
                info.value_size(),
                sized(info.max_entries()),
            );
            let want = (
                def.map_type(),
                def.key_size(),
                def.value_size(),
                sized(def.max_entries()),
            );
            if have == want {
                continue;
            }
            std::fs::remove_file(&path).map_err(io("unpin incompatible map", &path))?;
            out.push(MapMigration {
                name,
                pinned: have,
                object: want,
            });
        }
        Ok(out)
    }

    fn load(&self, nat_entries: u32) -> Result<(), BpfError> {
        let maps_dir = self.dir.join("maps");
        for d in [&maps_dir, &self.progs, &self.links_dir()] {
            crate::private::create_dir(d).map_err(io("create pin dir", d))?;
        }
        let paths: Vec<(&str, PathBuf)> = map::ALL.iter().map(|m| (*m, self.map_path(m))).collect();
        let mut loader = EbpfLoader::new();
        // Only maps created now get it: aya reuses a map found at its pin
        // (migrate_maps compares type and key/value sizes, not capacity).
        loader.map_max_entries(map::NAT, nat_entries);
        loader.map_max_entries(map::NAT_IN, nat_entries);
        loader.map_max_entries(map::NAT_EST, nat_entries);
        loader.map_max_entries(map::NAT_SHARE, nat_entries);
        for (name, path) in &paths {
            loader.map_pin_path(name, path.as_path());
        }
        let mut ebpf = loader
            .load(object())
            .map_err(|e| BpfError::Load(Box::new(e)))?;
        for name in prog::TC.iter().chain(prog::SOCK.iter()) {
            let p = ebpf.program_mut(name).ok_or_else(|| {
                BpfError::program(*name, "missing from object")(
                    aya::programs::ProgramError::NotLoaded,
                )
            })?;
            let err = |what| BpfError::program(*name, what);
            let path = self.prog_path(name);
            // A half-finished earlier load may have left a pin behind.
            let _ = std::fs::remove_file(&path);
            let pinned = if prog::TC.contains(name) {
                let p: &mut SchedClassifier = p.try_into().map_err(err("not a classifier"))?;
                p.load().map_err(err("load"))?;
                p.pin(&path)
            } else {
                let p: &mut CgroupSockAddr = p.try_into().map_err(err("not a sock_addr hook"))?;
                p.load().map_err(err("load"))?;
                p.pin(&path)
            };
            pinned.map_err(|e| BpfError::Link {
                name: path.display().to_string(),
                what: "pin program",
                source: Box::new(e),
            })?;
        }
        Ok(())
    }
}

/// What [`Datapath::open_or_load`] found when it loaded.
#[derive(Debug, Default)]
pub struct LoadReport {
    /// No map was pinned: the pins were lost (or this is the first load).
    pub maps_lost: bool,
    /// Pinned maps that were re-created because their layout differed.
    pub migrated: Vec<MapMigration>,
}

/// A pinned map re-created with this object's layout.
#[derive(Debug)]
pub struct MapMigration {
    /// Map name.
    pub name: &'static str,
    /// (type, key size, value size, max entries) of the old pin (max
    /// entries 0: not compared, the NAT map).
    pub pinned: (u32, u32, u32, u32),
    /// (type, key size, value size, max entries) in this object.
    pub object: (u32, u32, u32, u32),
}

impl std::fmt::Display for MapMigration {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (t0, k0, v0, m0) = self.pinned;
        let (t1, k1, v1, m1) = self.object;
        write!(
            f,
            "map {} re-created: pinned type {t0} key {k0} value {v0} bytes {m0} entries, object type {t1} key {k1} value {v1} bytes {m1} entries",
            self.name
        )
    }
}

/// Opens the program pinned at `path` (`BPF_OBJ_GET`) without aya: aya's
/// `from_pin` asks for the program's name, which makes it probe every
/// kernel feature it knows once per process (BTF, program and map types,
/// among them a CPUMAP and a DEVMAP; 1-2 ms of an ADD, more under load) for a
/// file descriptor that is all a cls_bpf filter needs.
pub(super) fn open_pinned_prog(path: &Path) -> std::io::Result<std::os::fd::OwnedFd> {
    use std::os::{fd::FromRawFd, unix::ffi::OsStrExt};
    /// The `BPF_OBJ_GET` part of `union bpf_attr`.
    #[repr(C)]
    struct ObjGet {
        pathname: u64,
        bpf_fd: u32,
        file_flags: u32,
        path_fd: i32,
        /// Explicit, so that no byte the kernel checks is uninitialised
        /// (it refuses non-zero bytes past the command's fields: EINVAL).
        pad: u32,
    }
    const _: () = assert!(std::mem::size_of::<ObjGet>() == 24);
    const BPF_OBJ_GET: libc::c_long = 7;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    let attr = ObjGet {
        pathname: c.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        pad: 0,
    };
    // SAFETY: `attr` is a valid, fully initialised prefix of bpf_attr for
    // BPF_OBJ_GET and `c` outlives the call; the kernel only reads both.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET,
            std::ptr::addr_of!(attr),
            std::mem::size_of::<ObjGet>(),
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: a new descriptor the kernel just returned, owned by no one else.
    Ok(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) })
}

/// Pins an attachment's link at `pin` (TCX and cgroup links): the pin keeps
/// it attached after this process exits; removing the pin detaches.
pub(super) fn pin_link<L>(link: L, pin: &Path) -> Result<(), BpfError>
where
    L: TryInto<aya::programs::links::FdLink>,
    L::Error: std::error::Error + Send + Sync + 'static,
{
    let err = |what| {
        move |e: Box<dyn std::error::Error + Send + Sync>| BpfError::Link {
            name: pin.display().to_string(),
            what,
            source: e,
        }
    };
    let fd = link
        .try_into()
        .map_err(|e| err("link to fd link")(Box::new(e)))?;
    fd.pin(pin).map_err(|e| err("pin link")(Box::new(e)))?;
    Ok(())
}

/// Makes sure `path` is on a bpffs, mounting one there if it is not. Only
/// over an empty directory: a mount over one that holds something (a
/// `pinPath` set to `/etc` by mistake) would hide its content from the whole
/// node, so that is refused before anything is changed.
pub fn ensure_bpffs(path: &Path) -> Result<(), BpfError> {
    let err = |source: std::io::Error| BpfError::Bpffs {
        path: path.display().to_string(),
        source,
    };
    crate::private::create_dir(path).map_err(err)?;
    let st = rustix::fs::statfs(path).map_err(|e| err(e.into()))?;
    if st.f_type as u64 == BPF_FS_MAGIC {
        return Ok(());
    }
    let mut entries = std::fs::read_dir(path).map_err(err)?;
    if let Some(first) = entries.next() {
        let name = first.map_or_else(|_| "?".into(), |e| e.file_name());
        return Err(err(std::io::Error::other(format!(
            "pinPath is neither a bpffs nor an empty directory (it holds {name:?}, which a bpffs mounted there would hide): point pinPath at a directory of its own"
        ))));
    }
    rustix::mount::mount(
        "bpf",
        path,
        "bpf",
        rustix::mount::MountFlags::empty(),
        c"mode=0700",
    )
    .map_err(|e| err(e.into()))
}
