//! The rule for device ids, once for both storage backends.

use super::DeviceId;

/// Which id a new device of an account gets. The primary is 1; a new device gets the smallest id from 2 up
/// that no device holds and that no device gave up after `reuse_after` (a token of that device could still
/// be alive), as long as the account has fewer than `max_devices` devices.
#[derive(Debug, Clone, Copy)]
pub struct DeviceSlots {
    pub max_devices: u32,
    pub reuse_after: i64,
}

impl DeviceSlots {
    /// `taken`: ids of the account's devices; `given_up`: ids removed, with when (ms). `None`: no room.
    pub fn pick(&self, taken: &[DeviceId], given_up: &[(DeviceId, i64)]) -> Option<DeviceId> {
        if taken.len() >= self.max_devices as usize {
            return None;
        }
        let resting = |id: DeviceId| given_up.iter().any(|(gone, at)| *gone == id && *at > self.reuse_after);
        (2..=DeviceId::MAX).map(DeviceId).find(|id| !taken.contains(id) && !resting(*id))
    }
}
