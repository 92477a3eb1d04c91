//! Running frames through the real program with BPF_PROG_TEST_RUN.

use nva::datapath::DataPath;
use nva_common::PacketReason;

pub use nva_common::{XDP_ABORTED, XDP_DROP, XDP_PASS};

/// Runs one frame; returns the XDP action and the one reason counter that
/// moved (asserting that exactly one moved, by one, and that the action
/// agrees with it).
pub fn run(dp: &DataPath, frame: &[u8], ifindex: u32) -> (u32, PacketReason) {
    let before = dp.packet_counters().unwrap();
    let action = dp.test_run(frame, ifindex).expect("test run");
    assert_ne!(action, XDP_ABORTED, "XDP_ABORTED for frame {frame:02x?}");
    let after = dp.packet_counters().unwrap();
    let moved: Vec<PacketReason> = PacketReason::ALL
        .iter()
        .copied()
        .filter(|r| after[*r as usize] != before[*r as usize])
        .collect();
    assert_eq!(
        moved.len(),
        1,
        "exactly one reason counter moves, got {moved:?}"
    );
    assert_eq!(after[moved[0] as usize], before[moved[0] as usize] + 1);
    let expected_action = if moved[0].is_pass() {
        XDP_PASS
    } else {
        XDP_DROP
    };
    assert_eq!(
        action, expected_action,
        "action agrees with reason {:?}",
        moved[0]
    );
    (action, moved[0])
}
