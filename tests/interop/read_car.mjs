// Reads CARs written by Forage with the JavaScript IPFS stack and reports what it found.
// Usage: node read_car.mjs FILE.car...
// Prints one JSON line per CAR: the roots, the block CIDs in stream order, duplicates, blocks
// whose bytes do not hash to their CID, and the size and SHA-256 of the file exported from
// the first root.
import { createHash } from 'node:crypto'
import { readFile } from 'node:fs/promises'
import { CarReader } from '@ipld/car'
import { exporter } from 'ipfs-unixfs-exporter'
import { sha256 } from 'multiformats/hashes/sha2'
import { equals } from 'multiformats/bytes'

async function report (path) {
  const reader = await CarReader.fromBytes(await readFile(path))
  const roots = (await reader.getRoots()).map((cid) => cid.toString())
  const order = []
  const duplicates = []
  const corrupt = []
  for await (const { cid, bytes } of reader.blocks()) {
    const name = cid.toString()
    if (order.includes(name)) duplicates.push(name)
    order.push(name)
    const digest = await sha256.digest(bytes)
    if (!equals(digest.bytes, cid.multihash.bytes)) corrupt.push(name)
  }
  // ipfs-unixfs-exporter 16 reads a block as an async iterable of byte arrays.
  const blockstore = {
    async * get (cid) {
      const block = await reader.get(cid)
      if (block === undefined) throw new Error(`block ${cid} is not in the CAR`)
      yield block.bytes
    }
  }
  const entry = await exporter((await reader.getRoots())[0], blockstore)
  const hash = createHash('sha256')
  let size = 0
  for await (const chunk of entry.content()) {
    hash.update(chunk)
    size += chunk.length
  }
  return JSON.stringify({
    roots, order, duplicates, corrupt, type: entry.type, size, sha256: hash.digest('hex')
  })
}

for (const path of process.argv.slice(2)) {
  process.stdout.write(await report(path) + '\n')
}
