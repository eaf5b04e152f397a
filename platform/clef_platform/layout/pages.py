"""What the platform's HTML pages share (the throughput page, the data card): the script that
marks a page whose images all loaded, which headless checks read as `data-images-ok`."""

IMAGES_OK_SCRIPT = """<script>window.addEventListener("load", () => {
  document.body.dataset.imagesOk = [...document.images].every(i => i.complete && i.naturalWidth > 0);
});</script>"""
