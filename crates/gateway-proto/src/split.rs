//! Splitting telemetry and attributes into messages that fit the server's limits.
//!
//! A message is cut into parts so that each part's exact serialized size fits the payload
//! budget (the packet limit minus the PUBLISH's own overhead) and its data points fit the
//! data-point limit. The data is a sequence of key-value pairs grouped by device and by entry
//! (timestamp); parts take consecutive pairs, so concatenating the parts' data gives the
//! original back, and each part keeps the device name, timestamp and metadata of every entry
//! it carries. Sizes are computed exactly from the same JSON writers that encode the parts,
//! piece by piece, so a part is never built just to be measured.
//!
//! One command may so become several publishes. [`Groups`] maps them back: the command's
//! [`RequestId`](crate::RequestId) is that of its first part, the other parts take the ids
//! after it (never shown to the application), and the command's one outcome is reported
//! when its last part finishes: success if every part succeeded, otherwise the first
//! failure ([`RequestError::Partial`] when some parts did get through).

use std::collections::BTreeMap;
use std::io;

use bytes::{Bytes, BytesMut};
use serde::Serialize;
use serde_json::{Map, Value};

use crate::event::RequestError;
use crate::idmap::{self, IdMap};
use crate::payload::{
    write_entry, ClientAttributes, DeviceTelemetry, GatewayTelemetry, Payload, TelemetryEntry,
    TelemetryMetadata,
};

/// What a part may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Budget {
    /// Largest payload, in bytes.
    pub(crate) payload: usize,
    /// Most data points (`None`: no limit).
    pub(crate) points: Option<u64>,
}

/// One publish of a split message.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Part {
    pub(crate) payload: Bytes,
    /// Key-value pairs it carries.
    pub(crate) points: u64,
    /// Devices it names (gateway messages), at least 1.
    pub(crate) devices: u64,
    /// The size the splitter computed for it (equal to `payload.len()`; kept for tests).
    pub(crate) model_size: usize,
}

/// A single value too large for any part: the smallest message carrying it alone would
/// need `size` payload bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unsplittable {
    pub(crate) device: Option<String>,
    pub(crate) key: Option<String>,
    pub(crate) size: usize,
}

/// What a message carries, counted from its command without building the [`Message`]: a
/// message that fits as it is (almost every one) is never built, so checking it allocates
/// nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Size {
    /// Devices named (1 for the Device API).
    pub(crate) devices: u64,
    /// Data points (key-value pairs).
    pub(crate) points: u64,
}

impl Size {
    /// One device's (or the device's own) telemetry entries.
    pub(crate) fn entries(entries: &[TelemetryEntry]) -> Self {
        Self {
            devices: 1,
            points: entries.iter().map(|e| e.values.len() as u64).sum(),
        }
    }

    /// One device's (or the device's own) attributes.
    pub(crate) fn values(values: &Map<String, Value>) -> Self {
        Self {
            devices: 1,
            points: values.len() as u64,
        }
    }

    /// Telemetry of several devices.
    pub(crate) fn batch(batch: &GatewayTelemetry) -> Self {
        Self {
            devices: (batch.devices.len() as u64).max(1),
            points: batch
                .devices
                .values()
                .map(|entries| Self::entries(entries).points)
                .sum(),
        }
    }
}

/// The JSON form of the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    /// `{"Dev":[entry,..],"Dev2":[..]}`.
    GatewayTelemetry,
    /// `{"Dev":{k:v,..}}`.
    GatewayAttributes,
    /// One entry as an object, several as an array.
    DeviceTelemetry,
    /// `{k:v,..}`.
    DeviceAttributes,
}

#[derive(Debug, Clone, Copy)]
struct EntryRef<'a> {
    ts: Option<i64>,
    values: &'a Map<String, Value>,
    metadata: Option<&'a TelemetryMetadata>,
}

/// A message to split, borrowed from its command.
#[derive(Debug)]
pub(crate) struct Message<'a> {
    shape: Shape,
    devices: Vec<(&'a str, Vec<EntryRef<'a>>)>,
}

fn entry_ref(e: &TelemetryEntry) -> EntryRef<'_> {
    EntryRef {
        ts: e.ts,
        values: &e.values,
        metadata: e.metadata.as_ref(),
    }
}

fn plain(values: &Map<String, Value>) -> EntryRef<'_> {
    EntryRef {
        ts: None,
        values,
        metadata: None,
    }
}

impl<'a> Message<'a> {
    /// `v1/gateway/telemetry` for one device.
    pub(crate) fn gateway_telemetry(device: &'a str, entries: &'a [TelemetryEntry]) -> Self {
        Self {
            shape: Shape::GatewayTelemetry,
            devices: vec![(device, entries.iter().map(entry_ref).collect())],
        }
    }

    /// `v1/gateway/telemetry` for several devices.
    pub(crate) fn gateway_batch(batch: &'a GatewayTelemetry) -> Self {
        Self {
            shape: Shape::GatewayTelemetry,
            devices: batch
                .devices
                .iter()
                .map(|(d, entries)| (d.as_str(), entries.iter().map(entry_ref).collect()))
                .collect(),
        }
    }

    /// `v1/gateway/attributes` for one device.
    pub(crate) fn gateway_attributes(device: &'a str, values: &'a Map<String, Value>) -> Self {
        Self {
            shape: Shape::GatewayAttributes,
            devices: vec![(device, vec![plain(values)])],
        }
    }

    /// Device telemetry. Parts carry no `metadata` (not interpreted on the Device API; the
    /// single-entry form never carried it).
    pub(crate) fn device_telemetry(entries: &'a [TelemetryEntry]) -> Self {
        Self {
            shape: Shape::DeviceTelemetry,
            devices: vec![(
                "",
                entries
                    .iter()
                    .map(|e| EntryRef {
                        metadata: None,
                        ..entry_ref(e)
                    })
                    .collect(),
            )],
        }
    }

    /// Device client attributes.
    pub(crate) fn device_attributes(values: &'a Map<String, Value>) -> Self {
        Self {
            shape: Shape::DeviceAttributes,
            devices: vec![("", vec![plain(values)])],
        }
    }

    /// Devices named and data points carried.
    pub(crate) fn size(&self) -> Size {
        Size {
            devices: (self.devices.len() as u64).max(1),
            points: self
                .devices
                .iter()
                .flat_map(|(_, entries)| entries)
                .map(|e| e.values.len() as u64)
                .sum(),
        }
    }

    fn gateway(&self) -> bool {
        matches!(
            self.shape,
            Shape::GatewayTelemetry | Shape::GatewayAttributes
        )
    }

    /// Cuts the message into parts that fit `budget`, in data order.
    pub(crate) fn split(&self, budget: &Budget) -> Result<Vec<Part>, Unsplittable> {
        let max_points = budget.points.unwrap_or(u64::MAX).max(1);
        let mut parts = Vec::new();
        let mut part = PartBuilder::new(self.shape);
        for (d, (device, entries)) in self.devices.iter().enumerate() {
            for (e, entry) in entries.iter().enumerate() {
                let kvs: Vec<Pair<'_>> = if entry.values.is_empty() {
                    vec![None]
                } else {
                    entry.values.iter().map(Some).collect()
                };
                for kv in kvs {
                    let atom = Atom {
                        device: d,
                        entry: e,
                        kv_size: kv.map(|(k, v)| json_len(k) + 1 + json_len(v)),
                    };
                    let cost = part.cost(self, &atom);
                    let points = u64::from(atom.kv_size.is_some());
                    if !part.is_empty()
                        && (part.size + cost > budget.payload || part.points + points > max_points)
                    {
                        parts.push(part.finish(self));
                        part = PartBuilder::new(self.shape);
                    }
                    let cost = part.cost(self, &atom);
                    if part.size + cost > budget.payload {
                        return Err(Unsplittable {
                            device: self.gateway().then(|| (*device).to_owned()),
                            key: kv.map(|(k, _)| k.clone()),
                            size: part.size + cost,
                        });
                    }
                    part.add(atom, kv, cost);
                }
            }
        }
        if !part.is_empty() {
            parts.push(part.finish(self));
        }
        Ok(parts)
    }

    /// Serialized size of entry `(d, e)` with no values.
    fn empty_entry_len(&self, d: usize, e: usize) -> usize {
        let entry = &self.devices[d].1[e];
        let mut counter = Counter(0);
        write_entry(&mut counter, entry.ts, &Map::new(), entry.metadata);
        counter.0
    }

    /// Separator bytes the first value of entry `(d, e)` adds besides itself: the plain
    /// form with metadata needs a comma before `"metadata"`.
    fn first_value_extra(&self, d: usize, e: usize) -> usize {
        let entry = &self.devices[d].1[e];
        usize::from(entry.ts.is_none() && entry.metadata.is_some())
    }
}

/// One key-value pair (or an entry without values) placed in a part.
#[derive(Debug, Clone, Copy)]
struct Atom {
    device: usize,
    entry: usize,
    /// `"key":value` length; `None` for an entry without values.
    kv_size: Option<usize>,
}

/// A key-value pair of the message (`None`: an entry without values).
type Pair<'m> = Option<(&'m String, &'m Value)>;
/// The entries of one device in a part: entry index and the pairs taken from it.
type PartEntries<'m> = Vec<(usize, Vec<Pair<'m>>)>;

/// The part being filled: its exact size so far and what it holds.
#[derive(Debug)]
struct PartBuilder<'m> {
    shape: Shape,
    size: usize,
    points: u64,
    /// Per device of the part: its index and entries (index, pairs).
    devices: Vec<(usize, PartEntries<'m>)>,
    entries_total: usize,
}

impl<'m> PartBuilder<'m> {
    fn new(shape: Shape) -> Self {
        let size = match shape {
            Shape::GatewayTelemetry | Shape::GatewayAttributes => 2,
            Shape::DeviceTelemetry | Shape::DeviceAttributes => 0,
        };
        Self {
            shape,
            size,
            points: 0,
            devices: Vec::new(),
            entries_total: 0,
        }
    }

    fn is_empty(&self) -> bool {
        self.devices.is_empty()
    }

    /// Bytes `atom` adds.
    fn cost(&self, msg: &Message<'_>, atom: &Atom) -> usize {
        let mut cost = 0;
        let current = self.devices.last().filter(|(d, _)| *d == atom.device);
        let entries_in_device = current.map_or(0, |(_, entries)| entries.len());
        if current.is_none() {
            let name = json_len(msg.devices[atom.device].0);
            cost += usize::from(!self.devices.is_empty());
            cost += match self.shape {
                Shape::GatewayTelemetry => name + 1 + 2,
                Shape::GatewayAttributes => name + 1,
                Shape::DeviceTelemetry | Shape::DeviceAttributes => 0,
            };
        }
        let current_entry = current
            .and_then(|(_, entries)| entries.last())
            .filter(|(e, _)| *e == atom.entry);
        let values_in_entry = current_entry.map_or(0, |(_, kvs)| kvs.len());
        if current_entry.is_none() {
            cost += msg.empty_entry_len(atom.device, atom.entry);
            cost += match self.shape {
                Shape::GatewayTelemetry => usize::from(entries_in_device > 0),
                // One entry is the object itself; the second adds `[`, `]` and a comma.
                Shape::DeviceTelemetry => match self.entries_total {
                    0 => 0,
                    1 => 3,
                    _ => 1,
                },
                Shape::GatewayAttributes | Shape::DeviceAttributes => 0,
            };
        }
        if let Some(kv) = atom.kv_size {
            cost += kv
                + if values_in_entry > 0 {
                    1
                } else {
                    msg.first_value_extra(atom.device, atom.entry)
                };
        }
        cost
    }

    fn add(&mut self, atom: Atom, kv: Pair<'m>, cost: usize) {
        self.size += cost;
        if self.devices.last().is_none_or(|(d, _)| *d != atom.device) {
            self.devices.push((atom.device, Vec::new()));
        }
        if let Some((_, entries)) = self.devices.last_mut() {
            if entries.last().is_none_or(|(e, _)| *e != atom.entry) {
                entries.push((atom.entry, Vec::new()));
                self.entries_total += 1;
            }
            if let Some((_, kvs)) = entries.last_mut() {
                if kv.is_some() {
                    self.points += 1;
                    kvs.push(kv);
                }
            }
        }
    }

    fn finish(self, msg: &Message<'_>) -> Part {
        let entry = |d: usize, e: usize, kvs: &[Pair<'_>]| {
            let original = &msg.devices[d].1[e];
            TelemetryEntry {
                ts: original.ts,
                values: kvs
                    .iter()
                    .flatten()
                    .map(|(k, v)| ((*k).clone(), (*v).clone()))
                    .collect(),
                metadata: original.metadata.cloned(),
            }
        };
        let mut buf = BytesMut::new();
        match self.shape {
            Shape::GatewayTelemetry => {
                let devices: BTreeMap<String, Vec<TelemetryEntry>> = self
                    .devices
                    .iter()
                    .map(|(d, entries)| {
                        let list = entries.iter().map(|(e, kvs)| entry(*d, *e, kvs)).collect();
                        (msg.devices[*d].0.to_owned(), list)
                    })
                    .collect();
                GatewayTelemetry { devices }.encode_into(&mut buf);
            }
            Shape::GatewayAttributes => {
                let mut o = Map::new();
                for (d, entries) in &self.devices {
                    let values: Map<String, Value> = entries
                        .iter()
                        .flat_map(|(e, kvs)| entry(*d, *e, kvs).values)
                        .collect();
                    o.insert(msg.devices[*d].0.to_owned(), Value::Object(values));
                }
                crate::payload::WriteJson::write_json(&o, &mut buf);
            }
            Shape::DeviceTelemetry => {
                let entries = self
                    .devices
                    .iter()
                    .flat_map(|(d, entries)| entries.iter().map(|(e, kvs)| entry(*d, *e, kvs)))
                    .collect();
                DeviceTelemetry { entries }.encode_into(&mut buf);
            }
            Shape::DeviceAttributes => {
                let values = self
                    .devices
                    .iter()
                    .flat_map(|(d, entries)| entries.iter().map(|(e, kvs)| entry(*d, *e, kvs)))
                    .flat_map(|e| e.values)
                    .collect();
                ClientAttributes { values }.encode_into(&mut buf);
            }
        }
        Part {
            payload: buf.freeze(),
            points: self.points,
            devices: (self.devices.len() as u64).max(1),
            model_size: self.size,
        }
    }
}

/// Counts bytes instead of storing them.
struct Counter(usize);

impl io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0 += buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl crate::payload::JsonSink for Counter {
    fn put(&mut self, bytes: &[u8]) {
        self.0 += bytes.len();
    }
}

/// Compact JSON length of `value`.
fn json_len<T: Serialize + ?Sized>(value: &T) -> usize {
    let mut counter = Counter(0);
    // Cannot fail: the writer never errors and strings / JSON values always serialize.
    let _ = serde_json::to_writer(&mut counter, value);
    counter.0
}

// ---------------------------------------------------------------------------------------------
// One request, several publishes
// ---------------------------------------------------------------------------------------------

/// How a part ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PartDone {
    /// QoS 1, acknowledged.
    Delivered,
    /// QoS 0, handed to the transport.
    Sent,
}

/// What finishing a publish means for its request.
#[derive(Debug, PartialEq)]
pub(crate) enum Settled {
    /// Not a part of a split command: its outcome (handed back) is the request's.
    Single(Result<PartDone, RequestError>),
    /// Other parts of the command are still unfinished.
    Waiting,
    /// The last part finished: the command's outcome.
    Done {
        request: u64,
        result: Result<PartDone, RequestError>,
    },
}

#[derive(Debug)]
struct Group {
    parts: usize,
    left: usize,
    ok: usize,
    last_ok: Option<PartDone>,
    error: Option<RequestError>,
}

/// Split commands with unfinished parts. Bounded by the publishes in flight or queued
/// (every part is one), so by [`Config::max_buffered_bytes`](crate::Config::max_buffered_bytes).
#[derive(Debug, Default)]
pub(crate) struct Groups {
    request_of: IdMap<u64, u64>,
    groups: IdMap<u64, Group>,
}

impl Groups {
    /// Registers a command whose parts are `ids`; the first is the request's own id.
    pub(crate) fn add(&mut self, ids: &[u64]) {
        let Some(&request) = ids.first() else {
            return;
        };
        if ids.len() < 2 {
            return;
        }
        for &id in ids {
            self.request_of.insert(id, request);
        }
        self.groups.insert(
            request,
            Group {
                parts: ids.len(),
                left: ids.len(),
                ok: 0,
                last_ok: None,
                error: None,
            },
        );
    }

    /// Publish `id` finished with `result`.
    pub(crate) fn settle(&mut self, id: u64, result: Result<PartDone, RequestError>) -> Settled {
        let Some(request) = idmap::take(&mut self.request_of, &id) else {
            return Settled::Single(result);
        };
        let Some(group) = self.groups.get_mut(&request) else {
            return Settled::Single(result);
        };
        group.left -= 1;
        match result {
            Ok(done) => {
                group.ok += 1;
                group.last_ok = Some(done);
            }
            Err(e) => {
                group.error.get_or_insert(e);
            }
        }
        if group.left > 0 {
            return Settled::Waiting;
        }
        let Some(group) = self.groups.remove(&request) else {
            return Settled::Waiting;
        };
        let result = match group.error {
            None => Ok(group.last_ok.unwrap_or(PartDone::Delivered)),
            Some(e) if group.ok == 0 => Err(e),
            Some(e) => Err(RequestError::Partial {
                delivered: group.ok,
                parts: group.parts,
                error: Box::new(e),
            }),
        };
        Settled::Done { request, result }
    }

    /// The request publish `id` belongs to (itself unless it is a later part).
    pub(crate) fn request_of(&self, id: u64) -> u64 {
        self.request_of.get(&id).copied().unwrap_or(id)
    }

    /// Split commands not finished.
    pub(crate) fn len(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn fits_in_one_part_when_small() {
        let entries = vec![TelemetryEntry::at(1, map(json!({"a": 1, "b": 2})))];
        let msg = Message::gateway_telemetry("Dev", &entries);
        let parts = msg
            .split(&Budget {
                payload: 1000,
                points: None,
            })
            .unwrap_or_default();
        assert_eq!(parts.len(), 1);
        assert_eq!(
            parts[0].payload,
            Bytes::from_static(br#"{"Dev":[{"ts":1,"values":{"a":1,"b":2}}]}"#)
        );
    }

    #[test]
    fn points_limit_cuts_seven_into_three_three_one() {
        let values = map(json!({"a":1,"b":2,"c":3,"d":4,"e":5,"f":6,"g":7}));
        let msg = Message::device_attributes(&values);
        let parts = msg
            .split(&Budget {
                payload: 10_000,
                points: Some(3),
            })
            .unwrap_or_default();
        let points: Vec<u64> = parts.iter().map(|p| p.points).collect();
        assert_eq!(points, [3, 3, 1]);
        assert_eq!(parts[2].payload, Bytes::from_static(br#"{"g":7}"#));
    }

    #[test]
    fn exact_size_boundary() {
        // {"Dev":[{"a":1,"b":2}]} is 23 bytes; {"Dev":[{"a":1}]} is 17.
        let entries = vec![TelemetryEntry::now(map(json!({"a": 1, "b": 2})))];
        let msg = Message::gateway_telemetry("Dev", &entries);
        for (budget, expected) in [(23, 1), (22, 2), (17, 2)] {
            let parts = msg
                .split(&Budget {
                    payload: budget,
                    points: None,
                })
                .unwrap_or_default();
            assert_eq!(parts.len(), expected, "budget {budget}");
            assert!(parts.iter().all(|p| p.payload.len() <= budget));
        }
        let err = msg
            .split(&Budget {
                payload: 16,
                points: None,
            })
            .unwrap_err();
        assert_eq!(err.key.as_deref(), Some("a"));
        assert_eq!(err.device.as_deref(), Some("Dev"));
        assert_eq!(err.size, 17);
    }

    #[test]
    fn groups_report_once_with_partial_failures() {
        let mut g = Groups::default();
        g.add(&[5, 6, 7]);
        assert_eq!(g.settle(6, Ok(PartDone::Delivered)), Settled::Waiting);
        assert_eq!(g.settle(5, Err(RequestError::Timeout)), Settled::Waiting);
        assert_eq!(
            g.settle(7, Ok(PartDone::Delivered)),
            Settled::Done {
                request: 5,
                result: Err(RequestError::Partial {
                    delivered: 2,
                    parts: 3,
                    error: Box::new(RequestError::Timeout)
                })
            }
        );
        assert_eq!(g.len(), 0);
        assert_eq!(
            g.settle(9, Ok(PartDone::Sent)),
            Settled::Single(Ok(PartDone::Sent))
        );
        g.add(&[10, 11]);
        g.settle(10, Err(RequestError::Closed));
        assert_eq!(
            g.settle(11, Err(RequestError::Closed)),
            Settled::Done {
                request: 10,
                result: Err(RequestError::Closed)
            }
        );
    }

    mod props {
        use super::*;
        use crate::payload::{ClientAttributes, GatewayAttributes};
        use proptest::prelude::*;

        fn json_value() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::Bool),
                any::<i64>().prop_map(|n| json!(n)),
                // Quarters: serde_json's default float parsing is not round-trip exact
                // for every f64, and the test parses the parts back.
                (-4_000_000i32..4_000_000).prop_map(|n| json!(f64::from(n) / 4.0)),
                "[a-z\\\"\u{e9}\u{1F321}\n ]{0,12}".prop_map(Value::String),
            ];
            leaf.prop_recursive(2, 8, 3, |inner| {
                prop_oneof![
                    prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
                    prop::collection::btree_map("[a-c]{1,2}", inner, 0..3)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        /// Keys that cannot turn a plain entry into the timestamped form.
        fn values() -> impl Strategy<Value = Map<String, Value>> {
            prop::collection::btree_map("[a-z\"\u{e9}]{1,6}", json_value(), 0..6)
                .prop_map(|m| m.into_iter().collect())
        }

        fn entry(with_metadata: bool) -> impl Strategy<Value = TelemetryEntry> {
            (
                prop::option::of(-10_000i64..2_000_000_000_000),
                values(),
                prop::option::of(("[a-z]{0,5}", any::<i32>(), any::<i32>())),
            )
                .prop_map(move |(ts, values, meta)| TelemetryEntry {
                    ts,
                    values,
                    metadata: meta
                        .filter(|_| with_metadata)
                        .map(|(c, r, p)| TelemetryMetadata {
                            connector: c,
                            received_ts: i64::from(r),
                            published_ts: i64::from(p),
                        }),
                })
        }

        #[derive(Debug, Clone)]
        enum Input {
            Telemetry(GatewayTelemetry),
            Attributes(String, Map<String, Value>),
            DeviceTelemetry(Vec<TelemetryEntry>),
            DeviceAttributes(Map<String, Value>),
        }

        fn input() -> impl Strategy<Value = Input> {
            let device = "[A-Za-z \"/+#\u{e9}]{1,8}";
            prop_oneof![
                prop::collection::btree_map(device, prop::collection::vec(entry(true), 1..4), 1..4)
                    .prop_map(|devices| Input::Telemetry(GatewayTelemetry { devices })),
                (device, values()).prop_map(|(d, v)| Input::Attributes(d, v)),
                prop::collection::vec(entry(false), 1..4).prop_map(Input::DeviceTelemetry),
                values().prop_map(Input::DeviceAttributes),
            ]
        }

        /// (device, ts, metadata, key) and value, in data order; `None` key = empty entry.
        type Flat = Vec<(
            String,
            Option<i64>,
            Option<TelemetryMetadata>,
            Option<String>,
            Value,
        )>;

        fn flatten_entries(device: &str, entries: &[TelemetryEntry], out: &mut Flat) {
            for e in entries {
                if e.values.is_empty() {
                    out.push((device.into(), e.ts, e.metadata.clone(), None, Value::Null));
                }
                for (k, v) in &e.values {
                    out.push((
                        device.into(),
                        e.ts,
                        e.metadata.clone(),
                        Some(k.clone()),
                        v.clone(),
                    ));
                }
            }
        }

        fn original(input: &Input) -> Flat {
            let mut out = Flat::new();
            match input {
                Input::Telemetry(t) => {
                    for (d, entries) in &t.devices {
                        flatten_entries(d, entries, &mut out);
                    }
                }
                Input::Attributes(d, v) => {
                    flatten_entries(d, &[TelemetryEntry::now(v.clone())], &mut out)
                }
                Input::DeviceTelemetry(entries) => {
                    let entries: Vec<TelemetryEntry> = entries
                        .iter()
                        .map(|e| TelemetryEntry {
                            metadata: None,
                            ..e.clone()
                        })
                        .collect();
                    flatten_entries("", &entries, &mut out)
                }
                Input::DeviceAttributes(v) => {
                    flatten_entries("", &[TelemetryEntry::now(v.clone())], &mut out)
                }
            }
            out
        }

        fn parsed(input: &Input, payload: &[u8]) -> Flat {
            let mut out = Flat::new();
            match input {
                Input::Telemetry(_) => {
                    let t = GatewayTelemetry::parse(payload).unwrap_or_default();
                    for (d, entries) in &t.devices {
                        flatten_entries(d, entries, &mut out);
                    }
                }
                Input::Attributes(..) => {
                    let a = GatewayAttributes::parse(payload).unwrap_or_default();
                    for (d, v) in a.devices {
                        flatten_entries(&d, &[TelemetryEntry::now(v)], &mut out);
                    }
                }
                Input::DeviceTelemetry(_) => {
                    let t = DeviceTelemetry::parse(payload).unwrap_or_default();
                    flatten_entries("", &t.entries, &mut out);
                }
                Input::DeviceAttributes(_) => {
                    let a = ClientAttributes::parse(payload).unwrap_or_default();
                    flatten_entries("", &[TelemetryEntry::now(a.values)], &mut out);
                }
            }
            out
        }

        fn message(input: &Input) -> Message<'_> {
            match input {
                Input::Telemetry(t) => Message::gateway_batch(t),
                Input::Attributes(d, v) => Message::gateway_attributes(d, v),
                Input::DeviceTelemetry(e) => Message::device_telemetry(e),
                Input::DeviceAttributes(v) => Message::device_attributes(v),
            }
        }

        /// The size `fit` counts from the command, without building the message.
        fn counted(input: &Input) -> Size {
            match input {
                Input::Telemetry(t) => Size::batch(t),
                Input::Attributes(_, v) | Input::DeviceAttributes(v) => Size::values(v),
                Input::DeviceTelemetry(e) => Size::entries(e),
            }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(400))]

            #[test]
            fn size_counted_from_the_command_is_the_message_size(input in input()) {
                prop_assert_eq!(counted(&input), message(&input).size());
            }

            #[test]
            fn parts_fit_exactly_and_concatenate_to_the_original(
                input in input(),
                payload in 8usize..400,
                points in prop::option::of(1u64..6),
            ) {
                let msg = message(&input);
                let budget = Budget { payload, points };
                match msg.split(&budget) {
                    Ok(parts) => {
                        let mut data = Flat::new();
                        for part in &parts {
                            prop_assert_eq!(part.model_size, part.payload.len(), "{:?}", part.payload);
                            prop_assert!(part.payload.len() <= payload);
                            prop_assert!(part.points <= points.unwrap_or(u64::MAX));
                            let flat = parsed(&input, &part.payload);
                            let counted = flat.iter().filter(|f| f.3.is_some()).count() as u64;
                            prop_assert_eq!(counted, part.points);
                            data.extend(flat);
                        }
                        prop_assert_eq!(data, original(&input));
                        prop_assert_eq!(
                            parts.iter().map(|p| p.points).sum::<u64>(),
                            msg.size().points
                        );
                    }
                    Err(u) => {
                        // Some value really does not fit alone: its one-pair message is
                        // larger than the budget.
                        prop_assert!(u.size > payload);
                        let alone = original(&input).into_iter().find(|f| {
                            f.3 == u.key && u.device.as_deref().is_none_or(|d| d == f.0)
                        });
                        prop_assert!(alone.is_some(), "{:?}", u);
                    }
                }
            }
        }
    }
}
