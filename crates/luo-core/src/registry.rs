//! The registry: the handlers an engine knows, in registration order, and the FLBs linked to
//! them.

use std::collections::HashMap;
use std::sync::Arc;

use luo_abi::image::COMPATIBLE_MAX;

use crate::error::Error;
use crate::flb::Flb;
use crate::handler::FileHandler;

/// The handlers and FLBs of an engine. Built once, before the engine exists, and shared.
#[derive(Debug, Default)]
pub struct Registry {
    pub(crate) handlers: Vec<Arc<dyn FileHandler>>,
    handler_index: HashMap<String, usize>,
    pub(crate) flbs: Vec<Arc<dyn Flb>>,
    flb_index: HashMap<String, usize>,
    /// For each handler, the FLBs linked to it in link order.
    pub(crate) handler_flbs: Vec<Vec<usize>>,
}

pub(crate) fn valid_compatible(c: &str) -> bool {
    !c.is_empty() && c.len() <= COMPATIBLE_MAX && !c.as_bytes().contains(&0)
}

impl Registry {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a handler after the ones already registered (handlers are tried in this order).
    ///
    /// The compatible must be 1..=47 bytes (`EINVAL`) and unique (`EEXIST`).
    pub fn register_handler(&mut self, handler: Arc<dyn FileHandler>) -> Result<(), Error> {
        let compatible = handler.compatible().to_owned();
        if !valid_compatible(&compatible) {
            return Err(Error::InvalidCompatible);
        }
        if self.handler_index.contains_key(&compatible) {
            return Err(Error::DuplicateCompatible(compatible));
        }
        self.handler_index.insert(compatible, self.handlers.len());
        self.handlers.push(handler);
        self.handler_flbs.push(Vec::new());
        Ok(())
    }

    /// Links `flb` to the registered handler `handler_compatible`. One FLB (the same `Arc`) may
    /// be linked to several handlers; two different FLBs may not share a compatible.
    pub fn register_flb(
        &mut self,
        handler_compatible: &str,
        flb: Arc<dyn Flb>,
    ) -> Result<(), Error> {
        let compatible = flb.compatible().to_owned();
        if !valid_compatible(&compatible) {
            return Err(Error::InvalidCompatible);
        }
        let &h = self
            .handler_index
            .get(handler_compatible)
            .ok_or_else(|| Error::UnknownHandler(handler_compatible.to_owned()))?;
        let f = match self.flb_index.get(&compatible) {
            Some(&f) if Arc::ptr_eq(&self.flbs[f], &flb) => f,
            Some(_) => return Err(Error::DuplicateCompatible(compatible)),
            None => {
                self.flb_index.insert(compatible.clone(), self.flbs.len());
                self.flbs.push(flb);
                self.flbs.len() - 1
            }
        };
        if self.handler_flbs[h].contains(&f) {
            return Err(Error::DuplicateCompatible(compatible));
        }
        self.handler_flbs[h].push(f);
        Ok(())
    }

    /// The registered handlers, in order.
    pub fn handlers(&self) -> impl Iterator<Item = &Arc<dyn FileHandler>> {
        self.handlers.iter()
    }

    pub(crate) fn handler_by_compatible(&self, compatible: &str) -> Option<usize> {
        self.handler_index.get(compatible).copied()
    }

    pub(crate) fn flb_by_compatible(&self, compatible: &str) -> Option<usize> {
        self.flb_index.get(compatible).copied()
    }
}
