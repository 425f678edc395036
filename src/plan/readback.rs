//! Asynchronous readback of a GPU buffer that never stalls the queue: the copy is
//! submitted, the map is requested, and the caller collects the bytes later (polling
//! without blocking natively; the browser's event loop completes it on the web).

use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};

type Slot = Arc<Mutex<Option<std::result::Result<(), wgpu::BufferAsyncError>>>>;

/// A staging buffer with at most one readback in flight.
pub struct Readback {
    device: wgpu::Device,
    queue: wgpu::Queue,
    staging: wgpu::Buffer,
    pending: Option<(u64, Slot)>,
}

impl Readback {
    /// A staging buffer of `bytes` bytes.
    pub fn new(device: &wgpu::Device, queue: &wgpu::Queue, bytes: u64) -> Readback {
        let staging = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("modelbatch metrics readback"),
            size: bytes.max(4).div_ceil(4) * 4,
            usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        Readback { device: device.clone(), queue: queue.clone(), staging, pending: None }
    }

    /// Whether a readback is in flight.
    pub fn busy(&self) -> bool {
        self.pending.is_some()
    }

    /// Copies the first `bytes` of `src` and requests the map. Fails if one is in flight.
    pub fn start(&mut self, src: &wgpu::Buffer, bytes: u64) -> Result<()> {
        if self.pending.is_some() {
            return Err(Error::Usage("readback already in flight".into()));
        }
        let mut encoder =
            self.device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("readback") });
        encoder.copy_buffer_to_buffer(src, 0, &self.staging, 0, bytes);
        self.queue.submit([encoder.finish()]);
        let slot: Slot = Arc::new(Mutex::new(None));
        let sink = slot.clone();
        self.staging.slice(..bytes).map_async(wgpu::MapMode::Read, move |r| {
            *sink.lock().unwrap_or_else(|p| p.into_inner()) = Some(r);
        });
        self.pending = Some((bytes, slot));
        Ok(())
    }

    /// The bytes if the readback has completed (`None` while in flight or idle). With
    /// `wait`, blocks until it completes (native) instead.
    pub fn try_finish(&mut self, wait: bool) -> Result<Option<Vec<u8>>> {
        let Some((bytes, slot)) = &self.pending else { return Ok(None) };
        #[cfg(not(target_arch = "wasm32"))]
        {
            let poll = if wait { wgpu::PollType::wait_indefinitely() } else { wgpu::PollType::Poll };
            self.device.poll(poll).map_err(|e| Error::Gpu(format!("waiting for metrics: {e}")))?;
        }
        let done = slot.lock().unwrap_or_else(|p| p.into_inner()).take();
        let bytes = *bytes;
        match done {
            None => Ok(None),
            Some(Err(e)) => {
                self.pending = None;
                Err(Error::Gpu(format!("mapping metrics: {e}")))
            }
            Some(Ok(())) => {
                let data = self
                    .staging
                    .slice(..bytes)
                    .get_mapped_range()
                    .map_err(|e| Error::Gpu(format!("reading metrics: {e}")))?
                    .to_vec();
                self.staging.unmap();
                self.pending = None;
                Ok(Some(data))
            }
        }
    }
}
