"""What the report is drawn from and how: report inputs, figure style, pages, the explorer."""
