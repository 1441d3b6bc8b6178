//! Whether a send addresses exactly the recipient's current devices: 410 for registration-id mismatches
//! first (as Signal does), then 409 for missing or extra devices.

use std::collections::BTreeSet;

use crate::directory::Entry;
use crate::domain::DeviceId;
use crate::error::ApiError;

/// `addressed`: each envelope's destination device and registration id. The sender's own device
/// (`own_device`, when sending to its own account) is never addressed.
pub fn check_devices(entry: &Entry, own_device: Option<DeviceId>, addressed: &[(u32, i64)]) -> Result<(), ApiError> {
    let devices: Vec<_> = entry.ready.iter().copied().filter(|(id, _)| Some(*id) != own_device).collect();
    let stale: BTreeSet<u32> = addressed
        .iter()
        .filter(|(device, registration)| {
            devices.iter().any(|(id, reg)| id.0 == *device && i64::from(reg.0) != *registration)
        })
        .map(|(device, _)| *device)
        .collect();
    if !stale.is_empty() {
        return Err(ApiError::StaleDevices(stale.into_iter().collect()));
    }
    let addressed: Vec<u32> = addressed.iter().map(|(device, _)| *device).collect();
    let current: BTreeSet<u32> = devices.iter().map(|(id, _)| id.0).collect();
    let missing: Vec<u32> = current.iter().copied().filter(|id| !addressed.contains(id)).collect();
    let mut extra: BTreeSet<u32> = addressed.iter().copied().filter(|id| !current.contains(id)).collect();
    // A device addressed twice is also an error of the sender's device list.
    for (i, id) in addressed.iter().enumerate() {
        if addressed[..i].contains(id) {
            extra.insert(*id);
        }
    }
    if !missing.is_empty() || !extra.is_empty() {
        return Err(ApiError::MismatchedDevices { missing, extra: extra.into_iter().collect() });
    }
    Ok(())
}
