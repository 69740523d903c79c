//! Entry points for `wasmlet-fuzz` (hidden from the docs): the parsers of
//! what a guest writes (a WAGI response) and of the usage log (the bill).

use bytes::Bytes;

/// Parses `out` as a WAGI function's output. On success: the status is a
/// final one (200-999) and the body is exactly the bytes after the header
/// block. Returns whether it parsed. Panics on a finding.
pub fn wagi_output(out: &[u8]) -> bool {
    let bytes = Bytes::copy_from_slice(out);
    match crate::wagi::parse_output(bytes) {
        Ok(r) => {
            assert!(r.status.as_u16() >= 200, "status {}", r.status);
            assert!(out.ends_with(&r.body), "body is not the output's tail");
            assert!(r.body.len() < out.len(), "no header block was consumed");
            true
        }
        Err(e) => {
            assert!(!e.contains('\n'), "multi-line error: {e:?}");
            false
        }
    }
}

/// Reads `log` as a usage log, with each grouping and memory basis: every
/// figure of the bill is a count or a non-negative amount, the total is
/// the sum of the rows, each line is either counted or skipped, and the
/// three renderings are made. Panics on a finding.
pub fn usage_bill(log: &[u8]) {
    use crate::bill::{BillOptions, GroupBy, MemoryBasis};
    let lines = log
        .split(|&b| b == b'\n')
        .filter(|l| !l.trim_ascii().is_empty())
        .count() as u64;
    for by in [GroupBy::Function, GroupBy::Trigger, GroupBy::Day] {
        for memory_basis in [MemoryBasis::Configured, MemoryBasis::Peak] {
            let opts = BillOptions {
                logs: Vec::new(),
                since: None,
                until: None,
                by,
                price_gb_second: crate::bill::DEFAULT_PRICE_GB_SECOND,
                price_per_million_requests: crate::bill::DEFAULT_PRICE_PER_MILLION_REQUESTS,
                memory_basis,
            };
            let bill = crate::bill::of_bytes(log, &opts);
            let t = &bill.total;
            let counted: u64 = bill.rows.iter().map(|r| r.invocations + r.rejected).sum();
            assert_eq!(counted + bill.skipped_lines, lines, "lines lost");
            assert_eq!(
                t.invocations,
                bill.rows.iter().map(|r| r.invocations).sum::<u64>()
            );
            assert!(t.errors <= t.invocations, "{t:?}");
            for r in bill.rows.iter().chain([t]) {
                for x in [r.gb_seconds, r.cpu_seconds, r.cost] {
                    assert!(x >= 0.0, "negative or NaN figure in {r:?}");
                }
            }
            let _ = (bill.table(by), bill.json());
            let csv = bill.csv();
            assert!(csv.ends_with('\n'));
        }
    }
}
