//! The event ring buffer and the monitor level (`cni-ebpf monitor`).

use aya::maps::{Array, MapData, RingBuf};
use cni_ebpf_common::map;

use super::{BpfError, Datapath};

impl Datapath {
    /// The pinned ring buffer of [`cni_ebpf_common::Event`]s.
    pub fn events(&self) -> Result<RingBuf<MapData>, BpfError> {
        self.map(map::EVENTS)
    }

    /// Sets the level the programs report events at; returns the previous one.
    pub fn set_monitor_level(&self, level: u32) -> Result<u32, BpfError> {
        let mut m: Array<MapData, u32> = self.map(map::MONITOR)?;
        let err = |what: &str| {
            let what = what.to_string();
            move |source| BpfError::Map {
                name: map::MONITOR,
                what,
                source,
            }
        };
        let prev = m.get(&0, 0).map_err(err("read level"))?;
        m.set(0, level, 0).map_err(err("set level"))?;
        Ok(prev)
    }
}
