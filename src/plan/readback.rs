//! Asynchronous readback of a GPU buffer that never stalls the queue: the copy is
//! submitted, the map is requested, and the caller collects the bytes later, either by
//! polling ([`Readback::try_finish`], non-blocking natively) or by awaiting
//! ([`Readback::finish`]): in the browser the map completes only when the JavaScript event
//! loop runs, so there the future is the only way to wait.

use futures::channel::oneshot;

use crate::error::{Error, Result};

type MapResult = std::result::Result<(), wgpu::BufferAsyncError>;

/// A staging buffer with at most one readback in flight.
pub struct Readback {
    device: wgpu::Device,
    queue: wgpu::Queue,
    staging: wgpu::Buffer,
    pending: Option<(u64, oneshot::Receiver<MapResult>)>,
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
        let (tx, rx) = oneshot::channel();
        self.staging.slice(..bytes).map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.pending = Some((bytes, rx));
        Ok(())
    }

    /// The bytes if the readback has completed (`None` while in flight or idle). With
    /// `wait`, blocks until it completes (native) instead; in the browser `wait` cannot
    /// block (use [`Readback::finish`]).
    pub fn try_finish(&mut self, wait: bool) -> Result<Option<Vec<u8>>> {
        // Waiting is `finish`, which awaits the callback itself, not only the poll: another
        // thread polling the same device may have taken the finished map's callback and not
        // yet run it when this thread's poll returns.
        #[cfg(not(target_arch = "wasm32"))]
        if wait {
            return pollster::block_on(self.finish());
        }
        #[cfg(target_arch = "wasm32")]
        let _ = wait;
        let Some((_, rx)) = &mut self.pending else { return Ok(None) };
        #[cfg(not(target_arch = "wasm32"))]
        self.device.poll(wgpu::PollType::Poll).map_err(|e| Error::Gpu(format!("waiting for metrics: {e}")))?;
        match rx.try_recv() {
            Ok(None) => Ok(None),
            Ok(Some(r)) => self.complete(Ok(r)).map(Some),
            Err(oneshot::Canceled) => self.complete(Err(oneshot::Canceled)).map(Some),
        }
    }

    /// Waits for the readback in flight and returns its bytes (`None` when idle). Natively
    /// this polls the device to completion; in the browser it resolves once the event loop
    /// has delivered the map callback, without blocking the page.
    pub async fn finish(&mut self) -> Result<Option<Vec<u8>>> {
        let Some((_, rx)) = &mut self.pending else { return Ok(None) };
        #[cfg(not(target_arch = "wasm32"))]
        self.device
            .poll(wgpu::PollType::wait_indefinitely())
            .map_err(|e| Error::Gpu(format!("waiting for metrics: {e}")))?;
        let r = rx.await;
        self.complete(r).map(Some)
    }

    fn complete(&mut self, r: std::result::Result<MapResult, oneshot::Canceled>) -> Result<Vec<u8>> {
        let Some((bytes, _)) = self.pending.take() else {
            return Err(Error::Usage("no readback in flight".into()));
        };
        match r {
            Err(oneshot::Canceled) => Err(Error::Gpu("metrics readback was cancelled (device lost?)".into())),
            Ok(Err(e)) => Err(Error::Gpu(format!("mapping metrics: {e}"))),
            Ok(Ok(())) => {
                let data = self
                    .staging
                    .slice(..bytes)
                    .get_mapped_range()
                    .map_err(|e| Error::Gpu(format!("reading metrics: {e}")))?
                    .to_vec();
                self.staging.unmap();
                Ok(data)
            }
        }
    }
}
