import { defineConfig } from 'vitest/config';
import vue from '@vitejs/plugin-vue';

// `npm run dev` proxies /api to a running urna-api (URNA_API_URL, default :8080).
const api = process.env.URNA_API_URL ?? 'http://127.0.0.1:8080';

export default defineConfig({
  plugins: [vue()],
  server: { proxy: { '/api': { target: api, changeOrigin: true } } },
  build: { outDir: 'dist', emptyOutDir: true, chunkSizeWarningLimit: 1024 },
  test: {
    environment: 'jsdom',
    include: ['tests/unit/**/*.test.ts'],
  },
});
