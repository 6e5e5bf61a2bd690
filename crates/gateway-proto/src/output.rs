//! The ordered queue of things the adapter must do.

use std::collections::VecDeque;

use bytes::{Bytes, BytesMut};

use crate::event::Event;

/// One action for the adapter, in order. Drain them with
/// [`Connection::poll_output`](crate::Connection::poll_output) after every call that feeds
/// the connection.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum Output {
    /// Write these bytes to the transport, in order, before acting on any later output.
    /// Consecutive writes are merged, so one drain usually yields one write.
    Transmit(Bytes),
    /// Tell the application.
    Event(Event),
    /// Open a new transport (TCP, TLS, ...) and report the result with
    /// [`Input::TransportOpened`](crate::Input::TransportOpened) or
    /// [`Input::TransportClosed`](crate::Input::TransportClosed).
    OpenTransport,
    /// Close the current transport after writing everything transmitted before. Feed
    /// nothing more from it.
    CloseTransport,
}

/// Outputs in order. Bytes queued back to back are merged into one `Transmit`: they
/// collect in `tail` until a non-transmit output is pushed or the queue is drained.
///
/// Bound: the adapter drains it after every call (the crate's contract), so it holds what one
/// call produces: for a command or timeout at most the buffered publishes
/// (`max_buffered_bytes`), for received bytes a few outputs per packet in that input.
#[derive(Debug, Default)]
pub(crate) struct OutputQueue {
    queue: VecDeque<Output>,
    tail: BytesMut,
}

impl OutputQueue {
    /// The buffer the next bytes to transmit are encoded into.
    pub(crate) fn transmit_buffer(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    pub(crate) fn event(&mut self, event: Event) {
        self.push(Output::Event(event));
    }

    pub(crate) fn push(&mut self, output: Output) {
        self.flush_tail();
        self.queue.push_back(output);
    }

    pub(crate) fn pop(&mut self) -> Option<Output> {
        if self.queue.is_empty() {
            self.flush_tail();
        }
        self.queue.pop_front()
    }

    /// Outputs waiting to be drained (merged bytes count as one).
    pub(crate) fn len(&self) -> usize {
        self.queue.len() + usize::from(!self.tail.is_empty())
    }

    fn flush_tail(&mut self) {
        if !self.tail.is_empty() {
            let bytes = self.tail.split().freeze();
            self.queue.push_back(Output::Transmit(bytes));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_merge_until_another_output_and_order_is_kept() {
        let mut q = OutputQueue::default();
        q.transmit_buffer().extend_from_slice(b"ab");
        q.transmit_buffer().extend_from_slice(b"cd");
        q.push(Output::CloseTransport);
        q.transmit_buffer().extend_from_slice(b"ef");
        assert_eq!(q.len(), 3);
        assert_eq!(q.pop(), Some(Output::Transmit(Bytes::from_static(b"abcd"))));
        assert_eq!(q.pop(), Some(Output::CloseTransport));
        assert_eq!(q.pop(), Some(Output::Transmit(Bytes::from_static(b"ef"))));
        assert_eq!(q.pop(), None);
    }
}
