//! The test harness shared by the driver's tests: a driver and a blocking client handle
//! wired to the sans-IO emulator on a virtual clock.

#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use gateway_client::{
    Action, BlockingClient, ClientEvent, ClientOptions, Commands, Driver, Events, FirstAttempt,
    Startup, TransportError,
};
use gateway_emulator::{Emulator, EmulatorConfig, NewDevice, Output as EmuOutput, SessionId};
use gateway_proto::Credentials;
use serde_json::{Map, Value};

pub struct Harness {
    pub driver: Driver,
    pub commands: Commands,
    pub startup: Option<Startup>,
    pub client: Option<BlockingClient>,
    pub events: Events,
    pub emu: Emulator,
    pub session: Option<SessionId>,
    pub now: Instant,
    pub writes: Vec<usize>,
    pub refuse_dial: bool,
}

impl Harness {
    pub fn new(token: &str, first: FirstAttempt, tweak: impl FnOnce(&mut ClientOptions)) -> Self {
        let now = Instant::now();
        let mut emu = Emulator::new(EmulatorConfig::default(), now, 1_700_000_000_000);
        emu.create_device(NewDevice::gateway("GW", "GW_TOKEN"))
            .unwrap();
        let mut options =
            ClientOptions::new("emulator", 1883, Credentials::AccessToken(token.into()));
        options.config.reconnect.seed = 7;
        tweak(&mut options);
        let parts = Driver::build(&options, now, first, None).unwrap();
        let mut h = Self {
            driver: parts.driver,
            commands: parts.commands,
            startup: Some(parts.startup),
            client: Some(parts.client.blocking()),
            events: parts.events,
            emu,
            session: None,
            now,
            writes: Vec::new(),
            refuse_dial: false,
        };
        h.settle();
        h
    }

    /// The platform's gateway (`GW_TOKEN`), its first session up.
    pub fn connected(tweak: impl FnOnce(&mut ClientOptions)) -> Self {
        let mut h = Self::new("GW_TOKEN", FirstAttempt::MustSucceed, tweak);
        h.startup
            .take()
            .expect("a new harness has its startup")
            .wait_blocking()
            .expect("the first session is up");
        h
    }

    /// Drops the session and makes every later dial fail: the connection is offline until
    /// `refuse_dial` is cleared.
    pub fn go_offline(&mut self) {
        self.refuse_dial = true;
        let s = self.session.take().expect("a session is up");
        self.emu.transport_closed(s, self.now);
        self.driver.transport_closed(self.now);
        self.settle();
    }

    pub fn client(&self) -> &BlockingClient {
        self.client.as_ref().unwrap()
    }

    /// Runs both sides until neither has anything to do.
    pub fn settle(&mut self) {
        loop {
            let mut moved = false;
            loop {
                match self.commands.try_recv() {
                    Ok(Some(r)) => {
                        moved = true;
                        self.driver.handle_request(self.now, r);
                    }
                    Ok(None) => break,
                    Err(()) => {
                        if !self.driver.is_finished()
                            && self.driver.connection().state() != gateway_proto::State::Closed
                        {
                            moved = true;
                            self.driver.handle_clients_gone(self.now);
                        }
                        break;
                    }
                }
            }
            while let Some(action) = self.driver.poll_action() {
                moved = true;
                match action {
                    Action::Write(bytes) => {
                        self.writes.push(bytes.len());
                        if let Some(s) = self.session {
                            self.emu.handle_bytes(s, self.now, &bytes);
                        }
                    }
                    Action::Open => {
                        if self.refuse_dial {
                            let err = std::io::Error::new(
                                std::io::ErrorKind::ConnectionRefused,
                                "refused",
                            );
                            self.driver.transport_failed(
                                self.now,
                                TransportError::connect("emulator:1883", &err),
                            );
                        } else {
                            self.session = Some(self.emu.open_session(self.now).unwrap());
                            self.driver.transport_opened(self.now);
                        }
                    }
                    Action::Close => {
                        if let Some(s) = self.session.take() {
                            self.emu.transport_closed(s, self.now);
                        }
                    }
                    other => panic!("unexpected {other:?}"),
                }
            }
            while let Some((sid, out)) = self.emu.poll_output() {
                moved = true;
                if Some(sid) != self.session {
                    continue;
                }
                match out {
                    EmuOutput::Transmit(bytes) => self.driver.handle_bytes(self.now, &bytes),
                    EmuOutput::Close => {
                        self.session = None;
                        self.emu.transport_closed(sid, self.now);
                        self.driver.transport_closed(self.now);
                    }
                }
            }
            while self.emu.poll_event().is_some() {}
            self.driver.flush_events_blocking();
            if !moved {
                return;
            }
        }
    }

    pub fn advance(&mut self, by: Duration) {
        let end = self.now + by;
        while let Some(at) = [self.driver.poll_timeout(), self.emu.poll_timeout()]
            .into_iter()
            .flatten()
            .filter(|t| *t <= end)
            .min()
        {
            self.now = self.now.max(at);
            self.driver.handle_timeout(self.now);
            self.emu.handle_timeout(self.now);
            self.settle();
        }
        self.now = end;
        self.settle();
    }

    pub fn drain_events(&self) -> Vec<ClientEvent> {
        std::iter::from_fn(|| self.events.try_recv()).collect()
    }
}

pub fn values(v: Value) -> Map<String, Value> {
    v.as_object().unwrap().clone()
}
