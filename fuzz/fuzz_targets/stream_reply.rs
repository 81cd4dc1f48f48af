//! Stream replies of arbitrary shape → deliveries or a clear error, never a panic.
#![no_main]

use arbitrary::{Arbitrary, Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use redis::Value;

/// A RESP value tree, biased towards the shapes XREADGROUP returns.
fn value(u: &mut Unstructured<'_>, depth: u32) -> Result<Value> {
    let leaf = depth >= 4;
    Ok(match u.int_in_range(0..=if leaf { 3 } else { 6 })? {
        0 => Value::Nil,
        1 => Value::Int(i64::arbitrary(u)?),
        2 => Value::BulkString(Vec::<u8>::arbitrary(u)?),
        3 => Value::SimpleString(String::arbitrary(u)?),
        4 => Value::Array((0..u.int_in_range(0..=4)?).map(|_| value(u, depth + 1)).collect::<Result<_>>()?),
        5 => Value::Map(
            (0..u.int_in_range(0..=3)?)
                .map(|_| Ok((value(u, depth + 1)?, value(u, depth + 1)?)))
                .collect::<Result<_>>()?,
        ),
        _ => {
            // A well-formed entry with fuzzed id and fields.
            let id = if bool::arbitrary(u)? { format!("{}-{}", u64::arbitrary(u)?, u64::arbitrary(u)?) } else { String::arbitrary(u)? };
            let fields = (0..u.int_in_range(0..=3)?).flat_map(|_| [Value::BulkString(b"env".to_vec()), Value::BulkString(vec![0x80])]).collect();
            Value::Array(vec![Value::BulkString(id.into_bytes()), Value::Array(fields)])
        }
    })
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let Ok(v) = value(&mut u, 0) else { return };
    if let Ok(deliveries) = fleetwire::redis::parse::read_reply(&v) {
        for d in deliveries {
            let _ = d.envelope();
        }
    }
});
