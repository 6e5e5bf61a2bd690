//! The client core and the sans-IO emulator wired by an in-memory transport on one virtual
//! clock, shared by the tests that run the client against the emulator (`mod link;`).

use std::time::{Duration, Instant};

use gateway_emulator::{
    Emulator, EmulatorConfig, Event as EmuEvent, Output as EmuOutput, SessionId,
};
use gateway_proto::{Config, Connection, Event, Input, OtaEvent, Output};

/// A client connection and the emulator, wired by an in-memory transport.
pub struct Link {
    pub conn: Connection,
    pub emu: Emulator,
    pub session: Option<SessionId>,
    pub now: Instant,
    pub events: Vec<Event>,
    pub emu_events: Vec<EmuEvent>,
    /// Stop moving bytes once this many OTA chunk events have arrived (to cut a download).
    pub pause_after_chunks: Option<usize>,
}

impl Link {
    /// The client events since the last call.
    #[allow(dead_code)] // not every test binary uses every helper
    pub fn take_events(&mut self) -> Vec<Event> {
        std::mem::take(&mut self.events)
    }

    /// An emulator set up by `setup`, and a client on `config`, run until quiet.
    pub fn new(config: Config, setup: impl FnOnce(&mut Emulator)) -> Self {
        Self::paused_after(config, setup, None)
    }

    /// The same, stopping once `chunks` OTA chunks have arrived (to cut a download).
    #[allow(dead_code)] // not every test binary uses every helper
    pub fn paused_after(
        config: Config,
        setup: impl FnOnce(&mut Emulator),
        chunks: Option<usize>,
    ) -> Self {
        let now = Instant::now();
        let mut emu = Emulator::new(EmulatorConfig::default(), now, 1_700_000_000_000);
        setup(&mut emu);
        let conn = Connection::new(config, now).unwrap();
        let mut link = Self {
            conn,
            emu,
            session: None,
            now,
            events: Vec::new(),
            emu_events: Vec::new(),
            pause_after_chunks: chunks,
        };
        link.settle();
        link
    }

    /// OTA chunk events received so far.
    pub fn chunks_seen(&self) -> usize {
        self.events
            .iter()
            .filter(|e| matches!(e, Event::Ota(OtaEvent::Chunk { .. })))
            .count()
    }

    fn paused(&self) -> bool {
        self.pause_after_chunks
            .is_some_and(|n| self.chunks_seen() >= n)
    }

    /// Moves bytes both ways until neither side has anything to say (or the chunk pause is
    /// reached).
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            while let Some(out) = self.conn.poll_output() {
                moved = true;
                match out {
                    Output::Transmit(bytes) => {
                        if let Some(s) = self.session {
                            self.emu.handle_bytes(s, self.now, &bytes);
                        }
                    }
                    Output::OpenTransport => {
                        self.session = Some(self.emu.open_session(self.now).unwrap());
                        self.conn.handle_input(self.now, Input::TransportOpened);
                    }
                    Output::CloseTransport => {
                        if let Some(s) = self.session.take() {
                            self.emu.transport_closed(s, self.now);
                        }
                    }
                    Output::Event(e) => self.events.push(e),
                    other => panic!("unexpected output {other:?}"),
                }
            }
            if self.paused() {
                return;
            }
            while let Some((sid, out)) = self.emu.poll_output() {
                moved = true;
                if Some(sid) != self.session {
                    continue;
                }
                match out {
                    EmuOutput::Transmit(bytes) => {
                        self.conn.handle_input(self.now, Input::Bytes(&bytes))
                    }
                    EmuOutput::Close => {
                        self.session = None;
                        self.emu.transport_closed(sid, self.now);
                        self.conn.handle_input(self.now, Input::TransportClosed);
                    }
                }
                if self.paused() {
                    break;
                }
            }
            while let Some(e) = self.emu.poll_event() {
                self.emu_events.push(e);
            }
            if !moved {
                return;
            }
        }
    }

    /// Advances the shared clock by `by`, firing every deadline of both sides on the way.
    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        loop {
            let next = [self.conn.poll_timeout(), self.emu.poll_timeout()]
                .into_iter()
                .flatten()
                .filter(|t| *t <= end)
                .min();
            let Some(at) = next else { break };
            self.now = self.now.max(at);
            self.conn.handle_input(self.now, Input::Timeout);
            self.emu.handle_timeout(self.now);
            self.settle();
        }
        self.now = end;
        self.conn.handle_input(self.now, Input::Timeout);
        self.emu.handle_timeout(self.now);
        self.settle();
    }
}
